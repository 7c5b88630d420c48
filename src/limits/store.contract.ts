// The behaviour every RateLimitStore must have, run against each implementation (memory,
// one Redis, a Redis Cluster) in the shape of undici's cache-store-test-utils.js. Real
// time: the Redis store reads Redis's clock, which a test cannot inject. Tiers whose
// figures are asserted have periods of an hour, so nothing refills during a test; the
// one refill test uses T = 1 s and polls with a deadline.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createTier, type TierParams } from './gcra.ts';
import { createKeyBuilder, type Dimension, type KeyValues } from './keys.ts';
import { isAdmitted, type LimitItem, type RateLimitStore } from './store.ts';

export interface RateLimitStoreFixture {
  store: RateLimitStore;
  cleanup: () => Promise<void>;
  /** The key's remaining time to live in ms (Redis PTTL), if the store has one to show. */
  pttl?: (key: string) => Promise<number>;
}

const HOUR = 3_600_000;

export function item(params: TierParams, keyBy: readonly Dimension[], values: KeyValues): LimitItem {
  const tier = createTier(params);
  const key = createKeyBuilder({ tier: tier.name, keyBy })(values);
  if (key === undefined) throw new Error('test item without a key');
  return { key, tier };
}

export function rateLimitStoreContract(name: string, make: () => Promise<RateLimitStoreFixture>): void {
  describe(`RateLimitStore contract: ${name}`, () => {
    async function withStore(fn: (f: RateLimitStoreFixture) => Promise<void>): Promise<void> {
      const fixture = await make();
      try {
        await fn(fixture);
      } finally {
        await fixture.cleanup();
      }
    }
    const subject = (): KeyValues => ({ subject: `user-${randomUUID()}`, route: 'r1', ip: '10.0.0.1' });

    it('lets a burst pass from idle, then refuses', () =>
      withStore(async ({ store }) => {
        const lim = item({ name: 'per-user', limit: 5, periodMs: HOUR }, ['subject'], subject());
        const remaining: number[] = [];
        for (let i = 0; i < 5; i++) {
          const [o] = await store.check([lim]);
          expect(o!.allowed).toBe(true);
          remaining.push(o!.remaining);
        }
        expect(remaining).toEqual([4, 3, 2, 1, 0]);
        for (let i = 0; i < 3; i++) {
          const [o] = await store.check([lim]);
          expect(o!.allowed).toBe(false);
          expect(o!.remaining).toBe(0);
          expect(o!.key).toBe(lim.key);
          expect(o!.tier).toBe(lim.tier);
          expect(o!.degraded).toBeUndefined();
        }
      }));

    it('a burst smaller than the limit: burst at once, then one per T', () =>
      withStore(async ({ store }) => {
        // T = 36 s; burst 3.
        const lim = item({ name: 'b', limit: 100, periodMs: HOUR, burst: 3 }, ['subject'], subject());
        const first = await store.check([lim]);
        expect(first[0]!.remaining).toBe(2);
        expect(first[0]!.resetMs).toBeLessThanOrEqual(36_000);
        expect(first[0]!.resetMs).toBeGreaterThan(30_000);
        await store.check([lim]);
        await store.check([lim]);
        const [denied] = await store.check([lim]);
        expect(denied!.allowed).toBe(false);
        expect(denied!.retryAfterMs).toBeLessThanOrEqual(36_000);
        expect(denied!.retryAfterMs).toBeGreaterThan(30_000);
        expect(denied!.resetMs).toBeLessThanOrEqual(108_000);
        expect(denied!.resetMs).toBeGreaterThan(100_000);
      }));

    it('reports remaining, reset and retry-after figures', () =>
      withStore(async ({ store }) => {
        // 10 per hour: T = 360 s.
        const lim = item({ name: 'figures', limit: 10, periodMs: HOUR }, ['subject'], subject());
        const [first] = await store.check([lim]);
        expect(first).toMatchObject({ allowed: true, remaining: 9, retryAfterMs: 0 });
        expect(first!.resetMs).toBeLessThanOrEqual(360_000);
        expect(first!.resetMs).toBeGreaterThan(350_000);
        for (let i = 0; i < 8; i++) await store.check([lim]);
        const [last] = await store.check([lim]);
        expect(last).toMatchObject({ allowed: true, remaining: 0, retryAfterMs: 0 });
        expect(last!.resetMs).toBeLessThanOrEqual(HOUR);
        expect(last!.resetMs).toBeGreaterThan(HOUR - 10_000);
        const [denied] = await store.check([lim]);
        expect(denied).toMatchObject({ allowed: false, remaining: 0 });
        expect(denied!.retryAfterMs).toBeLessThanOrEqual(360_000);
        expect(denied!.retryAfterMs).toBeGreaterThan(350_000);
        // A refusal is not charged: the reset is still that of the tenth request.
        expect(denied!.resetMs).toBeLessThanOrEqual(last!.resetMs);
        expect(denied!.resetMs).toBeGreaterThan(HOUR - 10_000);
      }));

    it('refills one request per T', () =>
      withStore(async ({ store }) => {
        const lim = item({ name: 'refill', limit: 1, periodMs: 1000 }, ['subject'], subject());
        // Find a refusal (on a machine slower than T per call this would loop: the deadline says so).
        const deadline = performance.now() + 10_000;
        let sentAt = 0;
        let retryAfterMs = -1;
        while (retryAfterMs < 0) {
          if (performance.now() > deadline) throw new Error('never refused');
          sentAt = performance.now();
          const [o] = await store.check([lim]);
          if (!o!.allowed) retryAfterMs = o!.retryAfterMs;
        }
        expect(retryAfterMs).toBeGreaterThan(0);
        expect(retryAfterMs).toBeLessThanOrEqual(1000);
        for (;;) {
          const [o] = await store.check([lim]);
          if (o!.allowed) break;
          if (performance.now() > sentAt + 10_000) throw new Error('never refilled');
          await new Promise((r) => setTimeout(r, 20));
        }
        // Not before the retry-after it announced (1 ms for its rounding up).
        expect(performance.now() - sentAt).toBeGreaterThanOrEqual(retryAfterMs - 1);
      }));

    it('checks the tiers of one group all-or-nothing: a refusal charges none of them', () =>
      withStore(async ({ store }) => {
        const v = subject();
        // Both keyed first by subject: one hash tag, one group.
        const small = item({ name: 'small', limit: 2, periodMs: HOUR }, ['subject'], v);
        const large = item({ name: 'large', limit: 5, periodMs: HOUR }, ['route', 'subject'], v);
        expect(isAdmitted(await store.check([small, large]))).toBe(true);
        expect(isAdmitted(await store.check([small, large]))).toBe(true);
        const third = await store.check([small, large]);
        expect(isAdmitted(third)).toBe(false);
        expect(third[0]).toMatchObject({ allowed: false, remaining: 0 });
        // 'large' would have admitted it, and was not charged: 3 left, as after two requests.
        expect(third[1]).toMatchObject({ allowed: true, remaining: 3, retryAfterMs: 0 });
        const [alone] = await store.check([large]);
        expect(alone).toMatchObject({ allowed: true, remaining: 2 });
      }));

    it('charges different groups independently (a refusal in one still counts in another)', () =>
      withStore(async ({ store }) => {
        const v = subject();
        const perUser = item({ name: 'per-user', limit: 1, periodMs: HOUR }, ['subject'], v);
        // Keyed by ip: another hash tag, another group.
        const perIp = item({ name: 'per-ip', limit: 5, periodMs: HOUR }, ['ip'], { ip: `ip-${randomUUID()}` });
        expect(isAdmitted(await store.check([perUser, perIp]))).toBe(true);
        const second = await store.check([perUser, perIp]);
        expect(second[0]!.allowed).toBe(false);
        expect(second[1]).toMatchObject({ allowed: true, remaining: 3 });
      }));

    it('charges a key listed twice in one check once, and answers both items', () =>
      withStore(async ({ store }) => {
        const lim = item({ name: 'dup', limit: 5, periodMs: HOUR }, ['subject'], subject());
        const out = await store.check([lim, lim]);
        expect(out).toHaveLength(2);
        expect(out[0]).toMatchObject({ allowed: true, remaining: 4 });
        expect(out[1]).toEqual(out[0]);
      }));

    it('answers an empty check with no outcomes', () =>
      withStore(async ({ store }) => {
        expect(await store.check([])).toEqual([]);
      }));

    it('admits exactly the burst among many concurrent checks of one key', () =>
      withStore(async ({ store }) => {
        const lim = item({ name: 'exact', limit: 20, periodMs: HOUR, burst: 20 }, ['subject'], subject());
        const out = await Promise.all(Array.from({ length: 300 }, () => store.check([lim])));
        expect(out.filter((o) => o[0]!.allowed)).toHaveLength(20);
      }));

    it('keeps keys independent', () =>
      withStore(async ({ store }) => {
        const a = item({ name: 'ind', limit: 1, periodMs: HOUR }, ['subject'], subject());
        const b = item({ name: 'ind', limit: 1, periodMs: HOUR }, ['subject'], subject());
        expect((await store.check([a]))[0]!.allowed).toBe(true);
        expect((await store.check([b]))[0]!.allowed).toBe(true);
        expect((await store.check([a]))[0]!.allowed).toBe(false);
      }));

    it('lets a key expire once its bucket would be full again (PTTL > 0 and <= the period)', async () => {
      const fixture = await make();
      try {
        if (!fixture.pttl) return; // a store without expiry to show (memory: an idle tat is no entry)
        const lim = item({ name: 'ttl', limit: 10, periodMs: 60_000 }, ['subject'], subject());
        await fixture.store.check([lim]);
        const one = await fixture.pttl(lim.key);
        expect(one).toBeGreaterThan(0);
        expect(one).toBeLessThanOrEqual(6_000);
        for (let i = 0; i < 12; i++) await fixture.store.check([lim]);
        const full = await fixture.pttl(lim.key);
        expect(full).toBeGreaterThan(50_000);
        expect(full).toBeLessThanOrEqual(60_000);
      } finally {
        await fixture.cleanup();
      }
    });
  });
}
