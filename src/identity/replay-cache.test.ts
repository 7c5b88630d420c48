import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisProcess } from '../../test/helpers/redis.ts';
import { replayCacheContract } from './replay-cache.contract.ts';
import { createMemoryReplayCache, createRedisReplayCache, ReplayCacheUnavailableError } from './replay-cache.ts';

function client(url: string): Redis {
  const redis = new Redis(url);
  // ioredis logs unhandled 'error' events; the failure tests cause them on purpose.
  redis.on('error', () => {});
  return redis;
}

replayCacheContract('memory', async () => {
  const cache = createMemoryReplayCache({ maxEntries: 1000 });
  return { cache, cleanup: () => cache.close() };
});

replayCacheContract('memory, with a per-partition share', async () => {
  const cache = createMemoryReplayCache({ maxEntries: 1000, maxEntriesPerPartition: 100 });
  return { cache, cleanup: () => cache.close() };
});

let server: RedisProcess;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server.stop();
});

replayCacheContract('redis', async () => {
  const redis = client(server.url);
  // A fresh prefix per fixture keeps tests independent on the one server.
  const cache = createRedisReplayCache({ redis, prefix: `test:${randomUUID()}:`, timeoutMs: 1000 });
  return {
    cache,
    cleanup: async () => {
      redis.disconnect();
    },
  };
});

describe('memory replay cache', () => {
  it('remembers a key for exactly ttl milliseconds of the injected clock', async () => {
    let now = 5_000;
    const cache = createMemoryReplayCache({ maxEntries: 10, now: () => now });
    expect(await cache.checkAndRemember('k', 1000)).toBe(true);
    now += 999;
    expect(await cache.checkAndRemember('k', 1000)).toBe(false);
    now += 1;
    expect(await cache.checkAndRemember('k', 1000)).toBe(true);
  });

  it('works with a clock that starts at zero', async () => {
    let now = 0;
    const cache = createMemoryReplayCache({ maxEntries: 10, now: () => now });
    expect(await cache.checkAndRemember('k', 1000)).toBe(true);
    expect(await cache.checkAndRemember('k', 1000)).toBe(false);
    now = 1000;
    expect(await cache.checkAndRemember('k', 1000)).toBe(true);
  });

  it('refuses a new key when every entry is live, and forgets none of them (CVE-2026-41707)', async () => {
    let now = 0;
    const refused: unknown[] = [];
    const cache = createMemoryReplayCache({ maxEntries: 2, now: () => now, onRefused: (e) => refused.push(e) });
    expect(await cache.checkAndRemember('a', 1000)).toBe(true);
    now = 100;
    expect(await cache.checkAndRemember('b', 1000)).toBe(true);
    const err = await cache.checkAndRemember('c', 1000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplayCacheUnavailableError);
    expect((err as ReplayCacheUnavailableError).reason).toBe('full');
    expect(cache.refusals).toBe(1);
    expect(refused).toEqual([{ reason: 'full', size: 2, partition: '' }]);
    // Both live entries are still there: the old behaviour evicted 'a' and let it be replayed.
    expect(await cache.checkAndRemember('a', 1000)).toBe(false);
    expect(await cache.checkAndRemember('b', 1000)).toBe(false);
    expect(cache.size).toBe(2);
    // Room comes back as entries expire, not before.
    now = 999;
    await expect(cache.checkAndRemember('c', 1000)).rejects.toBeInstanceOf(ReplayCacheUnavailableError);
    now = 1000;
    expect(await cache.checkAndRemember('c', 1000)).toBe(true);
    expect(await cache.checkAndRemember('b', 1000)).toBe(false);
  });

  it('makes room from expired entries, without a refusal', async () => {
    let now = 0;
    const cache = createMemoryReplayCache({ maxEntries: 2, now: () => now });
    await cache.checkAndRemember('a', 1000);
    await cache.checkAndRemember('b', 1000);
    now = 1000;
    expect(await cache.checkAndRemember('c', 1000)).toBe(true);
    expect(await cache.checkAndRemember('d', 1000)).toBe(true);
    expect(cache.refusals).toBe(0);
  });

  it('answers a replay as a replay even when full: a refusal is only for keys it has not seen', async () => {
    const cache = createMemoryReplayCache({ maxEntries: 1, now: () => 0 });
    expect(await cache.checkAndRemember('a', 1000)).toBe(true);
    expect(await cache.checkAndRemember('a', 1000)).toBe(false);
    await expect(cache.checkAndRemember('b', 1000)).rejects.toThrow(/live/);
  });

  it('bounds each partition to its share; other partitions go on; a full share forgets nothing', async () => {
    let now = 0;
    const refused: { reason: string }[] = [];
    const cache = createMemoryReplayCache({ maxEntries: 100, maxEntriesPerPartition: 10, now: () => now, onRefused: (e) => refused.push(e) });
    expect(await cache.checkAndRemember('k1:captured', 1000, 'k1')).toBe(true);
    for (let i = 0; i < 9; i++) expect(await cache.checkAndRemember(`k1:${i}`, 1000, 'k1')).toBe(true);
    // k1 holds its 10: its flood is refused from here on…
    for (let i = 9; i < 50; i++) {
      const err = await cache.checkAndRemember(`k1:${i}`, 1000, 'k1').catch((e: unknown) => e);
      expect((err as ReplayCacheUnavailableError).reason).toBe('partition_full');
    }
    expect(refused).toHaveLength(41);
    expect(refused.every((r) => r.reason === 'partition_full')).toBe(true);
    // …the captured proof is still remembered, and another key is unaffected.
    expect(await cache.checkAndRemember('k1:captured', 1000, 'k1')).toBe(false);
    expect(await cache.checkAndRemember('k2:a', 1000, 'k2')).toBe(true);
    expect(cache.size).toBe(11);
    // k1's share frees as its entries expire.
    now = 1000;
    expect(await cache.checkAndRemember('k1:new', 1000, 'k1')).toBe(true);
  });

  it('a partition emptied by expiry is forgotten, so partitions do not pile up', async () => {
    let now = 0;
    const cache = createMemoryReplayCache({ maxEntries: 100_000, maxEntriesPerPartition: 2, now: () => now });
    for (let p = 0; p < 3000; p++) await cache.checkAndRemember(`p${p}:x`, 1000, `p${p}`);
    now = 2000;
    // Every partition's entries expired: each may hold two new ones again.
    for (let p = 0; p < 3000; p++) {
      expect(await cache.checkAndRemember(`p${p}:y`, 1000, `p${p}`)).toBe(true);
      expect(await cache.checkAndRemember(`p${p}:z`, 1000, `p${p}`)).toBe(true);
    }
    expect(cache.size).toBe(6000);
    await expect(cache.checkAndRemember('p0:w', 1000, 'p0')).rejects.toThrow(/holds its 2/);
  });

  it('a renewed key keeps its partition count right when the ttl changed between calls', async () => {
    let now = 0;
    const cache = createMemoryReplayCache({ maxEntries: 10, maxEntriesPerPartition: 2, now: () => now });
    expect(await cache.checkAndRemember('long', 10_000, 'p')).toBe(true);
    expect(await cache.checkAndRemember('short', 100, 'p')).toBe(true);
    now = 200; // 'short' expired but sits behind 'long', which has not
    expect(await cache.checkAndRemember('short', 100, 'p')).toBe(true);
    expect(await cache.checkAndRemember('short', 100, 'p')).toBe(false);
    await expect(cache.checkAndRemember('third', 100, 'p')).rejects.toThrow(/holds its 2/);
    now = 20_000;
    expect(await cache.checkAndRemember('third', 100, 'p')).toBe(true);
    expect(cache.size).toBe(1);
  });

  it('drops expired entries as new ones arrive: it holds the live window, not everything ever seen', async () => {
    let now = 0;
    const cache = createMemoryReplayCache({ maxEntries: 1000, now: () => now });
    for (let i = 0; i < 100; i++) await cache.checkAndRemember(`old-${i}`, 1000);
    now = 500;
    for (let i = 0; i < 50; i++) await cache.checkAndRemember(`mid-${i}`, 1000);
    expect(cache.size).toBe(150);
    now = 1200; // the first 100 have expired, the next 50 have not
    await cache.checkAndRemember('new', 1000);
    expect(cache.size).toBe(51);
    expect(await cache.checkAndRemember('mid-0', 1000)).toBe(false);
    expect(await cache.checkAndRemember('old-0', 1000)).toBe(true);
    expect(cache.refusals).toBe(0);
  });

  it('tells keys apart however long and however alike (it remembers digests, not keys)', async () => {
    const cache = createMemoryReplayCache({ maxEntries: 1000 });
    const stem = `${'j'.repeat(43)}:${'x'.repeat(250)}`;
    expect(await cache.checkAndRemember(`${stem}a`, 10_000)).toBe(true);
    expect(await cache.checkAndRemember(`${stem}b`, 10_000)).toBe(true);
    expect(await cache.checkAndRemember(`${stem}a`, 10_000)).toBe(false);
    expect(await cache.checkAndRemember(`a${stem}`, 10_000)).toBe(true);
  });

  it('refuses an unbounded or nonsensical size', () => {
    expect(() => createMemoryReplayCache({ maxEntries: 10, maxEntriesPerPartition: 0 })).toThrow(RangeError);
    expect(() => createMemoryReplayCache({ maxEntries: 0 })).toThrow(RangeError);
    expect(() => createMemoryReplayCache({ maxEntries: 1.5 })).toThrow(RangeError);
    expect(() => createMemoryReplayCache({ maxEntries: Number.POSITIVE_INFINITY })).toThrow(RangeError);
  });
});

describe('redis replay cache', () => {
  it('two instances sharing one Redis see each other’s entries (cross-instance replay)', async () => {
    const prefix = `test:${randomUUID()}:`;
    const [ra, rb] = [client(server.url), client(server.url)];
    try {
      const a = createRedisReplayCache({ redis: ra, prefix, timeoutMs: 1000 });
      const b = createRedisReplayCache({ redis: rb, prefix, timeoutMs: 1000 });
      expect(await a.checkAndRemember('jkt:jti-1', 10_000)).toBe(true);
      expect(await b.checkAndRemember('jkt:jti-1', 10_000)).toBe(false);
      expect(await b.checkAndRemember('jkt:jti-2', 10_000)).toBe(true);
      expect(await a.checkAndRemember('jkt:jti-2', 10_000)).toBe(false);
    } finally {
      ra.disconnect();
      rb.disconnect();
    }
  });

  it('stores under the prefix with the ttl as a PX expiry', async () => {
    const prefix = `test:${randomUUID()}:`;
    const redis = client(server.url);
    try {
      const cache = createRedisReplayCache({ redis, prefix, timeoutMs: 1000 });
      await cache.checkAndRemember('k', 30_000);
      const pttl = await redis.pttl(`${prefix}k`);
      expect(pttl).toBeGreaterThan(25_000);
      expect(pttl).toBeLessThanOrEqual(30_000);
    } finally {
      redis.disconnect();
    }
  });

  it('different prefixes do not collide', async () => {
    const redis = client(server.url);
    try {
      const a = createRedisReplayCache({ redis, prefix: `test:${randomUUID()}:`, timeoutMs: 1000 });
      const b = createRedisReplayCache({ redis, prefix: `test:${randomUUID()}:`, timeoutMs: 1000 });
      expect(await a.checkAndRemember('k', 10_000)).toBe(true);
      expect(await b.checkAndRemember('k', 10_000)).toBe(true);
    } finally {
      redis.disconnect();
    }
  });

  it('Redis killed: checkAndRemember rejects with a typed error, never resolves true', async () => {
    const own = await startRedis();
    const redis = client(own.url);
    try {
      const cache = createRedisReplayCache({ redis, prefix: 'test:', timeoutMs: 300 });
      expect(await cache.checkAndRemember('before', 10_000)).toBe(true);
      await own.stop();
      const started = Date.now();
      const err = await cache.checkAndRemember('after', 10_000).then(
        (v) => v,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ReplayCacheUnavailableError);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      redis.disconnect();
      await own.stop();
    }
  });

  it('fails fast too when the client does not queue while disconnected', async () => {
    const own = await startRedis();
    const redis = new Redis(own.url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
    redis.on('error', () => {});
    try {
      const cache = createRedisReplayCache({ redis, prefix: 'test:', timeoutMs: 5000 });
      await redis.connect();
      await own.stop();
      const err = await cache.checkAndRemember('after', 10_000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ReplayCacheUnavailableError);
      expect((err as ReplayCacheUnavailableError).reason).toBe('error');
      expect((err as ReplayCacheUnavailableError).cause).toBeInstanceOf(Error);
    } finally {
      redis.disconnect();
      await own.stop();
    }
  });

  it('Redis too slow: rejects with reason "timeout" after timeoutMs', async () => {
    const admin = client(server.url);
    const redis = client(server.url);
    try {
      const cache = createRedisReplayCache({ redis, prefix: `test:${randomUUID()}:`, timeoutMs: 150 });
      await redis.ping();
      // Holds every client's write commands server-side: a wedged Redis, not a dead one.
      // Paused far longer than the bound below: a busy machine's late timer still fits under it.
      await admin.call('CLIENT', 'PAUSE', '5000', 'WRITE');
      const started = Date.now();
      const err = await cache.checkAndRemember('k', 10_000).catch((e: unknown) => e);
      const took = Date.now() - started;
      expect(err).toBeInstanceOf(ReplayCacheUnavailableError);
      expect((err as ReplayCacheUnavailableError).reason).toBe('timeout');
      expect(took).toBeGreaterThanOrEqual(140);
      expect(took).toBeLessThan(3000); // not the pause's 5 s
    } finally {
      await admin.call('CLIENT', 'UNPAUSE');
      admin.disconnect();
      redis.disconnect();
    }
  });
});
