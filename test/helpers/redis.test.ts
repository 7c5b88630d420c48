import { connect } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from './ports.ts';
import { startRedis, type RedisProcess } from './redis.ts';

const started: RedisProcess[] = [];
afterAll(async () => {
  await Promise.all(started.map((r) => r.stop()));
});

async function start(): Promise<RedisProcess> {
  const r = await startRedis();
  started.push(r);
  return r;
}

/** Resolves with the connect error code, or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startRedis', () => {
  it('starts a real server that ioredis can SET and GET against', async () => {
    const r = await start();
    expect(r.url).toBe(`redis://127.0.0.1:${r.port}`);
    expect(isAlive(r.pid)).toBe(true);

    const client = new Redis(r.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      expect(await client.set('k', 'v1')).toBe('OK');
      expect(await client.get('k')).toBe('v1');
      // No persistence configured, so a test never inherits data from a previous run.
      expect(await client.config('GET', 'save')).toEqual(['save', '']);
      expect(await client.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
    } finally {
      client.disconnect();
    }
  });

  it('stop() kills the process and the port then refuses connections', async () => {
    const r = await start();
    expect(await tryConnect(r.port)).toBe('connected');
    await r.stop();
    expect(isAlive(r.pid)).toBe(false);
    expect(await tryConnect(r.port)).toBe('ECONNREFUSED');
    await r.stop(); // idempotent
  });

  it('stop() affects only its own server', async () => {
    const [a, b] = await Promise.all([start(), start()]);
    expect(a.port).not.toBe(b.port);
    expect(a.pid).not.toBe(b.pid);
    await a.stop();
    expect(await tryConnect(a.port)).toBe('ECONNREFUSED');

    const client = new Redis(b.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      expect(await client.ping()).toBe('PONG');
    } finally {
      client.disconnect();
    }
  });

  it('fails clearly when the binary is missing', async () => {
    await expect(startRedis({ bin: 'redis-server-does-not-exist' })).rejects.toThrow(/redis-server-does-not-exist not found on PATH/);
  });

  it('fails clearly when the server exits before answering', async () => {
    // `false` exits 1 immediately, standing in for a redis-server that cannot start.
    await expect(startRedis({ bin: 'false' })).rejects.toThrow(/exited before answering PING \(code 1/);
  });
});

describe('freePort', () => {
  it('returns a port nothing is listening on', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    expect(await tryConnect(port)).toBe('ECONNREFUSED');
  });
});
