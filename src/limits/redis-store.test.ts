import { randomUUID } from 'node:crypto';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisCluster, type RedisClusterProcess } from '../../test/helpers/redis-cluster.ts';
import { startRedis, type RedisProcess } from '../../test/helpers/redis.ts';
import { createRedisStore, rateLimitRedisOptions } from './redis-store.ts';
import { item, rateLimitStoreContract } from './store.contract.ts';
import { RateLimitStoreError, type RateLimitStore } from './store.ts';

const HOUR = 3_600_000;

let server: RedisProcess;
let cluster: RedisClusterProcess;
const clients: (Redis | Cluster)[] = [];

beforeAll(async () => {
  [server, cluster] = await Promise.all([startRedis(), startRedisCluster()]);
}, 30_000);
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await Promise.all([server?.stop(), cluster?.stop()]);
});

async function single(opts: RedisOptions = {}): Promise<Redis> {
  const c = new Redis(server.url, { ...rateLimitRedisOptions, ...opts, lazyConnect: true });
  c.on('error', () => {});
  clients.push(c);
  await c.connect();
  return c;
}

async function clustered(): Promise<Cluster> {
  const { retryStrategy: _r, enableOfflineQueue: _q, ...redisOptions } = rateLimitRedisOptions;
  const c = new Cluster(cluster.startupNodes, { enableAutoPipelining: true, redisOptions, lazyConnect: true });
  c.on('error', () => {});
  clients.push(c);
  await c.connect();
  return c;
}

rateLimitStoreContract('redis', async () => {
  const redis = await single();
  return { store: createRedisStore({ redis }), cleanup: async () => redis.disconnect(), pttl: (k) => redis.pttl(k) };
});

rateLimitStoreContract('redis, with auto-pipelining', async () => {
  const redis = await single({ enableAutoPipelining: true });
  return { store: createRedisStore({ redis }), cleanup: async () => redis.disconnect(), pttl: (k) => redis.pttl(k) };
});

rateLimitStoreContract('redis cluster', async () => {
  const redis = await clustered();
  return { store: createRedisStore({ redis }), cleanup: async () => redis.disconnect(), pttl: (k) => redis.pttl(k) };
});

/** Two gateways: two clients, two stores, one key, many concurrent clients. */
async function twoInstances(stores: RateLimitStore[]): Promise<number> {
  const lim = item({ name: 'exact', limit: 20, periodMs: HOUR, burst: 20 }, ['subject'], { subject: `u-${randomUUID()}` });
  const out = await Promise.all(Array.from({ length: 600 }, (_, i) => stores[i % stores.length]!.check([lim])));
  return out.filter((o) => o[0]!.allowed).length;
}

describe('redis store', () => {
  it('is exact across two instances on one Redis: 600 concurrent checks, 20 per hour → exactly 20', async () => {
    const [a, b] = await Promise.all([single(), single()]);
    expect(await twoInstances([createRedisStore({ redis: a }), createRedisStore({ redis: b })])).toBe(20);
  });

  it('is exact across two instances on a Redis Cluster', async () => {
    const [a, b] = await Promise.all([clustered(), clustered()]);
    expect(await twoInstances([createRedisStore({ redis: a }), createRedisStore({ redis: b })])).toBe(20);
  });

  it('spreads groups over the cluster and checks them in one call each', async () => {
    const redis = await clustered();
    const store = createRedisStore({ redis });
    // Many subjects: their tags hash to slots on all three nodes.
    const items = Array.from({ length: 30 }, () => item({ name: 'spread', limit: 1, periodMs: HOUR }, ['subject'], { subject: randomUUID() }));
    const out = await store.check(items);
    expect(out.every((o) => o.allowed)).toBe(true);
    const again = await store.check(items);
    expect(again.every((o) => !o.allowed)).toBe(true);
    const sizes = await Promise.all(redis.nodes('master').map((n) => n.dbsize()));
    expect(sizes.filter((s) => s > 0)).toHaveLength(3);
  });

  it('loads the script once per connection and calls it by SHA after (EVAL once, EVALSHA for the rest)', async () => {
    const own = await startRedis();
    const redis = new Redis(own.url, { ...rateLimitRedisOptions, lazyConnect: true });
    redis.on('error', () => {});
    try {
      await redis.connect();
      const store = createRedisStore({ redis });
      const lim = item({ name: 'sha', limit: 1000, periodMs: HOUR }, ['subject'], { subject: 's' });
      for (let i = 0; i < 50; i++) await store.check([lim]);
      // 50 concurrent checks (made in one event-loop turn) are one batch: one script call.
      await Promise.all(Array.from({ length: 50 }, () => store.check([lim])));
      // A check of two groups is one call too.
      const other = item({ name: 'sha', limit: 1000, periodMs: HOUR }, ['ip'], { ip: '10.0.0.9' });
      for (let i = 0; i < 10; i++) await store.check([lim, other]);
      const stats = String(await redis.info('commandstats'));
      const calls = (cmd: string) => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
      expect(calls('eval')).toBe(1);
      expect(calls('evalsha')).toBe(50 + 1 + 10 - 1);
      // After SCRIPT FLUSH (a restarted Redis) the NOSCRIPT reply makes ioredis send it again.
      await redis.script('FLUSH');
      expect((await store.check([lim]))[0]!.allowed).toBe(true);
    } finally {
      redis.disconnect();
      await own.stop();
    }
  });

  it('reads Redis time, not the client clock, and stores integer microsecond tats', async () => {
    const redis = await single();
    const store = createRedisStore({ redis });
    const lim = item({ name: 'tat', limit: 1, periodMs: 1000 }, ['subject'], { subject: randomUUID() });
    await store.check([lim]);
    const raw = await redis.get(lim.key);
    expect(raw).toMatch(/^\d{16}$/);
    const [sec, usec] = (await redis.time()) as [number | string, number | string];
    const redisNowUs = Number(sec) * 1e6 + Number(usec);
    expect(Number(raw) - redisNowUs).toBeGreaterThan(0);
    expect(Number(raw) - redisNowUs).toBeLessThanOrEqual(1_000_000);
  });

  it('writes nothing for a refused request', async () => {
    const redis = await single();
    const store = createRedisStore({ redis });
    const lim = item({ name: 'nowrite', limit: 1, periodMs: HOUR }, ['subject'], { subject: randomUUID() });
    await store.check([lim]);
    const before = await redis.get(lim.key);
    for (let i = 0; i < 5; i++) expect((await store.check([lim]))[0]!.allowed).toBe(false);
    expect(await redis.get(lim.key)).toBe(before);
  });

  it('rejects with a typed error carrying the groups that did answer', async () => {
    const redis = await single();
    const store = createRedisStore({ redis });
    const ok = item({ name: 'partial', limit: 5, periodMs: HOUR }, ['subject'], { subject: randomUUID() });
    const bad = item({ name: 'partial', limit: 5, periodMs: HOUR }, ['ip'], { ip: randomUUID() });
    // A key of the wrong type makes the script's GET fail for that group only.
    await redis.hset(bad.key, 'x', '1');
    const err = await store.check([ok, bad]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RateLimitStoreError);
    expect((err as RateLimitStoreError).reason).toBe('error');
    expect((err as RateLimitStoreError).partial?.[0]).toMatchObject({ allowed: true, remaining: 4 });
    expect((err as RateLimitStoreError).partial?.[1]).toBeUndefined();
  });
});
