import { describe, expect, it } from 'vitest';
import { createTier } from './gcra.ts';
import { createMemoryStore } from './memory-store.ts';
import { rateLimitStoreContract } from './store.contract.ts';
import { isAdmitted } from './store.ts';

rateLimitStoreContract('memory', async () => {
  const store = createMemoryStore({ maxEntries: 10_000 });
  return { store, cleanup: () => store.close() };
});

describe('memory store, injected clock', () => {
  it('follows GCRA exactly: burst at once, then one per T, figures in ms', async () => {
    let now = 1_000_000;
    const store = createMemoryStore({ now: () => now });
    // 6 per minute, burst 2: T = 10 s, tau = 20 s.
    const tier = createTier({ name: 't', limit: 6, periodMs: 60_000, burst: 2 });
    const check = async () => (await store.check([{ key: 'k', tier }]))[0]!;
    expect(await check()).toMatchObject({ allowed: true, remaining: 1, resetMs: 10_000, retryAfterMs: 0 });
    expect(await check()).toMatchObject({ allowed: true, remaining: 0, resetMs: 20_000, retryAfterMs: 0 });
    expect(await check()).toMatchObject({ allowed: false, remaining: 0, resetMs: 20_000, retryAfterMs: 10_000 });
    now += 9_999;
    expect(await check()).toMatchObject({ allowed: false, retryAfterMs: 1 });
    now += 1;
    expect(await check()).toMatchObject({ allowed: true, remaining: 0, resetMs: 20_000 });
    // Idle for long: full again, never more than the burst.
    now += 3_600_000;
    expect(await check()).toMatchObject({ allowed: true, remaining: 1 });
  });

  it('admits exactly `limit` per period at a steady pace, with a fractional T (3 per second)', async () => {
    let now = 0;
    const store = createMemoryStore({ now: () => now });
    const tier = createTier({ name: 't', limit: 3, periodMs: 1000, burst: 1 });
    expect(tier.intervalUs).toBe(333_334); // rounded up: never faster than the limit
    let admitted = 0;
    for (now = 0; now < 10_000; now += 1) if ((await store.check([{ key: 'k', tier }]))[0]!.allowed) admitted++;
    expect(admitted).toBe(30);
  });

  it('evicts the least recently used key, and says when that one was still limited', async () => {
    let now = 0;
    let evictedLive = 0;
    const store = createMemoryStore({ maxEntries: 2, now: () => now, onEvictLive: () => evictedLive++ });
    const tier = createTier({ name: 't', limit: 1, periodMs: 1000 });
    await store.check([{ key: 'a', tier }]);
    await store.check([{ key: 'b', tier }]);
    now = 5000; // both idle now
    await store.check([{ key: 'c', tier }]); // evicts a, idle
    expect(evictedLive).toBe(0);
    expect(store.size).toBe(2);
    await store.check([{ key: 'd', tier }]); // evicts b, idle too
    expect(evictedLive).toBe(0);
    await store.check([{ key: 'e', tier }]); // evicts c, which is live
    expect(evictedLive).toBe(1);
  });

  it('all-or-nothing per group: with the clock still, the same refusal repeats and nothing drifts', async () => {
    const store = createMemoryStore({ now: () => 0 });
    const a = { key: 'x:{s}:a', tier: createTier({ name: 'a', limit: 1, periodMs: 1000 }) };
    const b = { key: 'x:{s}:b', tier: createTier({ name: 'b', limit: 3, periodMs: 1000 }) };
    expect(isAdmitted(await store.check([a, b]))).toBe(true);
    for (let i = 0; i < 5; i++) {
      const out = await store.check([a, b]);
      expect(isAdmitted(out)).toBe(false);
      expect(out[1]).toMatchObject({ allowed: true, remaining: 2 });
    }
  });

  it('rejects a bad maxEntries', () => {
    expect(() => createMemoryStore({ maxEntries: 0 })).toThrow(RangeError);
  });
});
