import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisCluster, type RedisClusterProcess } from './redis-cluster.ts';
import { startRedis } from './redis.ts';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startRedisCluster', () => {
  let cluster: RedisClusterProcess;
  beforeAll(async () => {
    cluster = await startRedisCluster();
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('joins three masters that cover every slot, and ioredis Cluster routes keys across them', async () => {
    expect(cluster.nodes).toHaveLength(3);
    const client = new Cluster(cluster.startupNodes, { lazyConnect: true });
    client.on('error', () => {});
    try {
      await client.connect();
      const slots = (await client.call('CLUSTER', 'SLOTS')) as [number, number, ...unknown[]][];
      expect(slots.reduce((n, [from, to]) => n + (to - from + 1), 0)).toBe(16384);
      // Keys on different slots, so different nodes are written.
      for (let i = 0; i < 30; i++) await client.set(`k${i}`, String(i));
      for (let i = 0; i < 30; i++) expect(await client.get(`k${i}`)).toBe(String(i));
      const sizes = await Promise.all(client.nodes('master').map((n) => n.dbsize()));
      expect(sizes.filter((s) => s > 0).length).toBeGreaterThan(1);
    } finally {
      client.disconnect();
    }
  });

  it('stop() kills exactly its three PIDs', async () => {
    const other = await startRedis();
    const own = await startRedisCluster();
    try {
      for (const n of own.nodes) expect(isAlive(n.pid)).toBe(true);
      await own.stop();
      for (const n of own.nodes) expect(isAlive(n.pid)).toBe(false);
      await own.stop(); // idempotent
      expect(isAlive(other.pid)).toBe(true);
      for (const n of cluster.nodes) expect(isAlive(n.pid)).toBe(true);
      const c = new Redis(other.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
      try {
        await c.connect();
        expect(await c.ping()).toBe('PONG');
      } finally {
        c.disconnect();
      }
    } finally {
      await own.stop();
      await other.stop();
    }
  }, 30_000);
});

describe('startRedis options', () => {
  it('listens on a given port, so a stopped server can come back where its clients are', async () => {
    const first = await startRedis();
    await first.stop();
    const again = await startRedis({ port: first.port });
    try {
      expect(again.port).toBe(first.port);
      expect(again.pid).not.toBe(first.pid);
      const c = new Redis(again.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
      try {
        await c.connect();
        expect(await c.ping()).toBe('PONG');
      } finally {
        c.disconnect();
      }
    } finally {
      await again.stop();
    }
  });

  it('passes extra arguments to redis-server', async () => {
    const r = await startRedis({ args: ['--maxmemory-policy', 'noeviction', '--hz', '17'] });
    const c = new Redis(r.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await c.connect();
      expect(await c.config('GET', 'hz')).toEqual(['hz', '17']);
    } finally {
      c.disconnect();
      await r.stop();
    }
  });

  it('rejects when the given port is taken, without trying another', async () => {
    const r = await startRedis();
    try {
      await expect(startRedis({ port: r.port, timeoutMs: 3000 })).rejects.toThrow(new RegExp(`port ${r.port}`));
    } finally {
      await r.stop();
    }
  });
});
