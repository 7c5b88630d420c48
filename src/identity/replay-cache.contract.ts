// The behaviour every ReplayCache must have, run against each implementation (the shape of
// undici's cache-store-test-utils.js). Real time, short ttls: the Redis store's expiry is
// Redis's clock, which a test cannot inject.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ReplayCacheUnavailableError, type ReplayCache } from './replay-cache.ts';

export interface ReplayCacheFixture {
  cache: ReplayCache;
  cleanup: () => Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export function replayCacheContract(name: string, make: () => Promise<ReplayCacheFixture>): void {
  describe(`ReplayCache contract: ${name}`, () => {
    async function withCache(fn: (cache: ReplayCache) => Promise<void>): Promise<void> {
      const { cache, cleanup } = await make();
      try {
        await fn(cache);
      } finally {
        await cleanup();
      }
    }

    it('reports a key as first seen the first time', () =>
      withCache(async (cache) => {
        expect(await cache.checkAndRemember(`k-${randomUUID()}`, 10_000)).toBe(true);
      }));

    it('reports the same key as a replay while it is remembered', () =>
      withCache(async (cache) => {
        const key = `k-${randomUUID()}`;
        expect(await cache.checkAndRemember(key, 10_000)).toBe(true);
        expect(await cache.checkAndRemember(key, 10_000)).toBe(false);
        expect(await cache.checkAndRemember(key, 10_000)).toBe(false);
      }));

    it('tells exactly one of many concurrent callers with the same key that it is first', () =>
      withCache(async (cache) => {
        const key = `k-${randomUUID()}`;
        const results = await Promise.all(Array.from({ length: 20 }, () => cache.checkAndRemember(key, 10_000)));
        expect(results.filter(Boolean)).toHaveLength(1);
      }));

    it('forgets a key after its ttl', () =>
      withCache(async (cache) => {
        const key = `k-${randomUUID()}`;
        expect(await cache.checkAndRemember(key, 60)).toBe(true);
        expect(await cache.checkAndRemember(key, 60)).toBe(false);
        await sleep(150);
        expect(await cache.checkAndRemember(key, 60)).toBe(true);
      }));

    it('keeps keys independent', () =>
      withCache(async (cache) => {
        const a = `a-${randomUUID()}`;
        const b = `b-${randomUUID()}`;
        expect(await cache.checkAndRemember(a, 10_000)).toBe(true);
        expect(await cache.checkAndRemember(b, 10_000)).toBe(true);
        expect(await cache.checkAndRemember(a, 10_000)).toBe(false);
        expect(await cache.checkAndRemember(b, 10_000)).toBe(false);
      }));

    it('does not refresh the ttl on a replay (a replay cannot extend its own window)', () =>
      withCache(async (cache) => {
        const key = `k-${randomUUID()}`;
        expect(await cache.checkAndRemember(key, 200)).toBe(true);
        await sleep(120);
        expect(await cache.checkAndRemember(key, 200)).toBe(false);
        // 260 ms after the first call: past its ttl, but inside a window restarted at 120 ms.
        await sleep(140);
        expect(await cache.checkAndRemember(key, 200)).toBe(true);
      }));

    it('a flood of fresh keys never makes it forget a live one: each is remembered or refused', () =>
      withCache(async (cache) => {
        const captured = `k-${randomUUID()}`;
        expect(await cache.checkAndRemember(captured, 10_000, 'jkt-a')).toBe(true);
        for (let i = 0; i < 2000; i++) {
          const outcome = await cache.checkAndRemember(`k-${randomUUID()}`, 10_000, 'jkt-a').catch((e: unknown) => e);
          if (outcome !== true) expect(outcome).toBeInstanceOf(ReplayCacheUnavailableError);
        }
        expect(await cache.checkAndRemember(captured, 10_000, 'jkt-a')).toBe(false);
      }));

    it('rejects a non-positive ttl instead of remembering nothing', () =>
      withCache(async (cache) => {
        await expect(cache.checkAndRemember(`k-${randomUUID()}`, 0)).rejects.toThrow(RangeError);
        await expect(cache.checkAndRemember(`k-${randomUUID()}`, Number.NaN)).rejects.toThrow(RangeError);
      }));
  });
}
