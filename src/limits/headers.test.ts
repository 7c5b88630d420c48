import { describe, expect, it } from 'vitest';
import { createTier } from './gcra.ts';
import { rateLimitHeaders, sfString } from './headers.ts';
import { createMemoryStore } from './memory-store.ts';
import type { LimitOutcome } from './store.ts';

const perUser = createTier({ name: 'per-user', limit: 100, periodMs: 60_000 });
const perIp = createTier({ name: 'per-ip', limit: 1000, periodMs: 3_600_000 });

function outcome(o: Partial<LimitOutcome> & Pick<LimitOutcome, 'tier'>): LimitOutcome {
  return { key: `k:${o.tier.name}`, allowed: true, remaining: 0, resetMs: 0, retryAfterMs: 0, ...o };
}

describe('RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10)', () => {
  it('lists one policy and one limit item per tier', () => {
    const h = rateLimitHeaders([
      outcome({ tier: perUser, remaining: 42, resetMs: 35_200 }),
      outcome({ tier: perIp, remaining: 998, resetMs: 7_001 }),
    ]);
    expect(h.policy).toBe('"per-user";q=100;w=60, "per-ip";q=1000;w=3600');
    expect(h.rateLimit).toBe('"per-user";r=42;t=36, "per-ip";r=998;t=8');
    expect(h.retryAfter).toBeUndefined();
  });

  it('gives Retry-After as the longest wait among refusing tiers, in whole seconds, at least 1', () => {
    expect(rateLimitHeaders([outcome({ tier: perUser, allowed: false, retryAfterMs: 1 })]).retryAfter).toBe(1);
    expect(rateLimitHeaders([outcome({ tier: perUser, allowed: false, retryAfterMs: 0 })]).retryAfter).toBe(1);
    const h = rateLimitHeaders([
      outcome({ tier: perUser, allowed: false, retryAfterMs: 600 }),
      outcome({ tier: perIp, allowed: false, retryAfterMs: 2_001 }),
    ]);
    expect(h.retryAfter).toBe(3);
  });

  it('reports degraded local figures, and only the policy of allow/deny fallbacks', () => {
    const h = rateLimitHeaders([
      outcome({ tier: perUser, degraded: 'allow', remaining: 100 }),
      outcome({ tier: perIp, degraded: 'local', remaining: 7, resetMs: 1000 }),
    ]);
    expect(h.policy).toBe('"per-user";q=100;w=60, "per-ip";q=1000;w=3600');
    expect(h.rateLimit).toBe('"per-ip";r=7;t=1');
    const denied = rateLimitHeaders([outcome({ tier: perUser, allowed: false, degraded: 'deny' })]);
    expect(denied.rateLimit).toBe('');
    expect(denied.retryAfter).toBeUndefined();
  });

  it('writes a sub-second period as w=1 and lists the same key once', () => {
    const fast = createTier({ name: 'fast', limit: 5, periodMs: 200 });
    const o = outcome({ tier: fast });
    expect(rateLimitHeaders([o, o]).policy).toBe('"fast";q=5;w=1');
    expect(rateLimitHeaders([]).policy).toBe('');
  });

  it('escapes policy names as structured-field strings', () => {
    expect(sfString('a"b\\c')).toBe('"a\\"b\\\\c"');
    expect(sfString('naïve\n')).toBe('"na?ve?"');
  });

  it('matches what a store reports for a real sequence', async () => {
    let now = 0;
    const store = createMemoryStore({ now: () => now });
    const tier = createTier({ name: 'demo', limit: 5, periodMs: 10_000 });
    let last: LimitOutcome[] = [];
    for (let i = 0; i < 6; i++) last = await store.check([{ key: 'k', tier }]);
    const h = rateLimitHeaders(last);
    expect(h).toEqual({ policy: '"demo";q=5;w=10', rateLimit: '"demo";r=0;t=10', retryAfter: 2 });
  });
});
