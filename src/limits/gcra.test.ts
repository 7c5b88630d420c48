import { describe, expect, it } from 'vitest';
import { checkGroup, createTier } from './gcra.ts';

describe('createTier', () => {
  it('derives T and tau in whole microseconds, burst defaulting to the limit', () => {
    const t = createTier({ name: 'per-user', limit: 100, periodMs: 60_000 });
    expect(t).toMatchObject({ burst: 100, intervalUs: 600_000, toleranceUs: 60_000_000, onStoreFailure: 'local' });
    expect(Object.isFrozen(t)).toBe(true);
  });

  it('rounds a fractional T up, never in the client\'s favour', () => {
    expect(createTier({ name: 't', limit: 3, periodMs: 1000 }).intervalUs).toBe(333_334);
    expect(createTier({ name: 't', limit: 1_000_000, periodMs: 1000 }).intervalUs).toBe(1);
  });

  it('refuses what it cannot limit', () => {
    const bad = [
      { name: '', limit: 1, periodMs: 1 },
      { name: 't', limit: 0, periodMs: 1000 },
      { name: 't', limit: 1.5, periodMs: 1000 },
      { name: 't', limit: 1, periodMs: 0 },
      { name: 't', limit: 1, periodMs: 1000, burst: 0 },
      { name: 't', limit: 1, periodMs: 1e12, burst: 1e6 },
    ];
    for (const p of bad) expect(() => createTier(p)).toThrow(RangeError);
  });
});

describe('checkGroup', () => {
  const t = createTier({ name: 't', limit: 2, periodMs: 2000 }); // T = 1 s, tau = 2 s

  it('treats a missing or past tat as idle', () => {
    for (const stored of [undefined, 0, 999_999]) {
      const r = checkGroup([t], [stored], 1_000_000);
      expect(r.admitted).toBe(true);
      expect(r.newTats).toEqual([2_000_000]);
      expect(r.results[0]).toEqual({ allowed: true, remaining: 1, resetUs: 1_000_000, retryAfterUs: 0 });
    }
  });

  it('refuses when the new tat runs past now + tau, from the unchanged tat', () => {
    const r = checkGroup([t], [3_000_000], 1_000_000);
    expect(r.admitted).toBe(false);
    expect(r.results[0]).toEqual({ allowed: false, remaining: 0, resetUs: 2_000_000, retryAfterUs: 1_000_000 });
  });

  it('charges none of the group when one refuses', () => {
    const wide = createTier({ name: 'w', limit: 10, periodMs: 10_000 });
    const r = checkGroup([t, wide], [3_000_000, undefined], 1_000_000);
    expect(r.admitted).toBe(false);
    expect(r.results[1]).toEqual({ allowed: true, remaining: 10, resetUs: 0, retryAfterUs: 0 });
  });

  it('never reports negative remaining for a tat beyond the tolerance (a tier shrunk by a reload)', () => {
    const r = checkGroup([t], [60_000_000], 1_000_000);
    expect(r.results[0]!.remaining).toBe(0);
  });
});
