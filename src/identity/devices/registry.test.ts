import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { startRedis, type RedisProcess } from '../../../test/helpers/redis.ts';
import { ConfigError } from '../../core/diagnostics.ts';
import { createFileRegistry } from './file-store.ts';
import { createRedisRegistry } from './redis-store.ts';
import { deviceInput, fingerprint, registryContract } from './registry.contract.ts';
import { DeviceRegistryUnavailableError, isStale, type DeviceRecord } from './registry.ts';

/** Polls `read` until `done` holds; returns the value and how long it took. */
async function eventually<T>(read: () => Promise<T>, done: (v: T) => boolean, timeoutMs = 2000): Promise<{ value: T; elapsedMs: number }> {
  const start = performance.now();
  for (;;) {
    const value = await read();
    const elapsedMs = performance.now() - start;
    if (done(value)) return { value, elapsedMs };
    if (elapsedMs > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms; last value ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let n = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ztgw-devices-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const tmpFile = (ext: string) => join(dir, `devices-${++n}.${ext}`);

// ── the contract, for every store ───────────────────────────────────────────────────

registryContract('file (yaml)', ({ now }) => createFileRegistry({ file: tmpFile('yaml'), now }));
registryContract('file (json)', ({ now }) => createFileRegistry({ file: tmpFile('json'), now }));
registryContract('file (watching)', ({ now }) => createFileRegistry({ file: tmpFile('yml'), now, watch: true }));

describe('redis', () => {
  let server: RedisProcess;
  const clients: Redis[] = [];
  const client = (options: RedisOptions = {}) => {
    const c = new Redis(server.url, { maxRetriesPerRequest: 0, ...options });
    c.on('error', () => {}); // expected while a test has stopped the server
    clients.push(c);
    return c;
  };
  beforeAll(async () => {
    server = await startRedis();
  });
  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await server.stop();
  });

  registryContract('redis', async ({ now }) => {
    const registry = createRedisRegistry({ redis: client(), prefix: `contract:${++n}:`, now });
    await registry.ready();
    return registry;
  });

  describe('redis store', () => {
    it('keeps one hash per device, posture as JSON, and an index set', async () => {
      const redis = client();
      const registry = createRedisRegistry({ redis, prefix: 'layout:', pubsub: false });
      const input = deviceInput('a', { label: 'lab' });
      const record = await registry.enroll(input);
      expect(await redis.hgetall(`layout:${input.id}`)).toEqual({
        owner: input.owner,
        enrolledAt: record.enrolledAt,
        label: 'lab',
        posture: JSON.stringify(input.posture),
      });
      expect(await redis.smembers('layout:index')).toEqual([input.id]);
      await registry.revoke(input.id, new Date('2025-03-02T00:00:00.000Z'));
      expect(await redis.hget(`layout:${input.id}`, 'revokedAt')).toBe('2025-03-02T00:00:00.000Z');
      await registry.close();
    });

    it('a revoke on A is visible on B within 1 s through pub/sub, however long B caches', async () => {
      const prefix = `pubsub:${++n}:`;
      const a = createRedisRegistry({ redis: client(), prefix });
      const b = createRedisRegistry({ redis: client(), prefix, cacheTtlMs: 60_000 });
      await Promise.all([a.ready(), b.ready()]);
      const { id } = await a.enroll(deviceInput('a'));
      expect((await b.get(id))?.revokedAt).toBeUndefined(); // now cached on B for a minute

      await a.revoke(id);
      const { value, elapsedMs } = await eventually(() => b.get(id), (r) => r?.revokedAt !== undefined);
      expect(value?.revokedAt).toBeDefined();
      expect(elapsedMs).toBeLessThan(1000);

      // And an enrolment replaces a cached "not enrolled" on B just as fast.
      const other = fingerprint('other');
      expect(await b.get(other)).toBeUndefined();
      await a.enroll(deviceInput('other'));
      expect((await eventually(() => b.get(other), (r) => r !== undefined)).elapsedMs).toBeLessThan(1000);
      await Promise.all([a.close(), b.close()]);
    });

    it('with pub/sub off (or a message missed), the cache TTL bounds staleness to under 1 s', async () => {
      const prefix = `ttl:${++n}:`;
      const a = createRedisRegistry({ redis: client(), prefix, pubsub: false });
      const b = createRedisRegistry({ redis: client(), prefix, pubsub: false, cacheTtlMs: 500 });
      const { id } = await a.enroll(deviceInput('a'));
      expect((await b.get(id))?.revokedAt).toBeUndefined();

      await a.revoke(id);
      const revokedAt = performance.now();
      // Still served from B's cache: this is the staleness the TTL bounds.
      expect((await b.get(id))?.revokedAt).toBeUndefined();
      await eventually(() => b.get(id), (r) => r?.revokedAt !== undefined);
      expect(performance.now() - revokedAt).toBeLessThan(1000);
      await Promise.all([a.close(), b.close()]);
    });

    it('does not cache a read that raced with an invalidation', async () => {
      const prefix = `race:${++n}:`;
      const a = createRedisRegistry({ redis: client(), prefix });
      // B's first HGETALL reads the hash at once but its reply is held until `release`:
      // the revoke and its invalidation land while the read is in flight.
      const real = client();
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let held = false;
      const slow = new Proxy(real, {
        get(target, prop) {
          if (prop === 'hgetall' && !held) {
            held = true;
            return (key: string) => target.hgetall(key).then(async (v) => (await gate, v));
          }
          const value: unknown = Reflect.get(target, prop);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
      const b = createRedisRegistry({ redis: slow, prefix, cacheTtlMs: 60_000 });
      await Promise.all([a.ready(), b.ready()]);
      const { id } = await a.enroll(deviceInput('a'));

      const inflight = b.get(id);
      await sleep(20); // the read has reached Redis
      await a.revoke(id);
      await sleep(100); // the invalidation has reached B
      release();
      expect((await inflight)?.revokedAt).toBeUndefined(); // answered from before the revoke
      // ...but not cached for the minute B would otherwise keep it:
      expect((await b.get(id))?.revokedAt).toBeDefined();
      await Promise.all([a.close(), b.close()]);
    });

    it('a corrupt record is an error, never "not enrolled"', async () => {
      const redis = client();
      const registry = createRedisRegistry({ redis, prefix: 'corrupt:', pubsub: false });
      const id = fingerprint('corrupt');
      await redis.hset(`corrupt:${id}`, { owner: 'x', enrolledAt: '2025-01-01T00:00:00Z', posture: '{not json' });
      await expect(registry.get(id)).rejects.toBeInstanceOf(DeviceRegistryUnavailableError);
      await redis.hset(`corrupt:${id}`, { posture: JSON.stringify({ managed: 'yes' }) });
      await expect(registry.get(id)).rejects.toThrow(/posture\.managed/);
      await registry.close();
    });

    it('Redis stopped: get, list, enroll and revoke reject with DeviceRegistryUnavailableError', async () => {
      const own = await startRedis();
      const redis = new Redis(own.url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50 });
      redis.on('error', () => {});
      const errors: Error[] = [];
      const registry = createRedisRegistry({ redis, prefix: 'down:', onError: (e) => errors.push(e) });
      try {
        await registry.ready();
        await registry.enroll(deviceInput('a'));
        await own.stop();
        const fresh = fingerprint('never-cached');
        const err = await registry.get(fresh).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(DeviceRegistryUnavailableError);
        expect((err as DeviceRegistryUnavailableError).code).toBe('ERR_DEVICE_REGISTRY_UNAVAILABLE');
        await expect(registry.list()).rejects.toBeInstanceOf(DeviceRegistryUnavailableError);
        await expect(registry.enroll(deviceInput('b'))).rejects.toBeInstanceOf(DeviceRegistryUnavailableError);
        await expect(registry.revoke(fingerprint('a'))).rejects.toBeInstanceOf(DeviceRegistryUnavailableError);
        // The subscriber's outage is reported once, not once per reconnect attempt (it
        // retries every 50 ms: several attempts fit in the 300 ms after the first report).
        await expect.poll(() => errors.length, { timeout: 5_000 }).toBeGreaterThan(0);
        await sleep(300);
        expect(errors.length).toBe(1);
        expect(errors[0]?.message).toMatch(/invalidation subscriber down/);
      } finally {
        await registry.close();
        redis.disconnect();
        await own.stop();
      }
    });

    it('a client that queues and retries still answers within timeoutMs when Redis is gone', async () => {
      const own = await startRedis();
      // ioredis defaults: offline queue on, 20 retries per request: seconds of waiting.
      const redis = new Redis(own.url);
      redis.on('error', () => {});
      const registry = createRedisRegistry({ redis, prefix: 'slow:', timeoutMs: 200, pubsub: false });
      try {
        await registry.enroll(deviceInput('a'));
        await own.stop();
        const start = performance.now();
        await expect(registry.get(fingerprint('b'))).rejects.toThrow(/timed out after 200 ms/);
        expect(performance.now() - start).toBeLessThan(1000);
      } finally {
        await registry.close();
        redis.disconnect();
      }
    });

    it('rejects a non-positive timeout and a negative TTL at creation', () => {
      const redis = client({ lazyConnect: true });
      expect(() => createRedisRegistry({ redis, timeoutMs: 0 })).toThrow(RangeError);
      expect(() => createRedisRegistry({ redis, cacheTtlMs: -1 })).toThrow(RangeError);
    });
  });
});

// ── file store ──────────────────────────────────────────────────────────────────────

describe('file store', () => {
  const A = fingerprint('a');
  const B = fingerprint('b');
  const entry = (id: string, owner: string, trust = 'high') => `  - id: ${id}
    owner: ${owner}
    enrolledAt: "2025-01-01T00:00:00Z"
    posture:
      managed: true
      diskEncrypted: true
      os: macOS
      osVersion: "14.5"
      lastCheckIn: "2025-01-02T00:00:00Z"
      trustLevel: ${trust}
`;

  it('a missing file is an empty registry; the first enroll creates it', async () => {
    const file = join(dir, 'sub', 'dir', `new-${++n}.yaml`);
    const registry = createFileRegistry({ file });
    expect(await registry.list()).toEqual([]);
    const record = await registry.enroll(deviceInput('a'));
    const data = parseYaml(await readFile(file, 'utf8')) as { devices: DeviceRecord[] };
    expect(data.devices).toEqual([record]);
    await registry.close();
  });

  it('writes edit the YAML in place: comments and other entries survive', async () => {
    const file = tmpFile('yaml');
    const text = `# Devices of the payments team. Ask #sec before adding one.
devices:
  # alice's laptop, replaced 2025-01
${entry(A, 'alice')}  # bob's desktop
${entry(B, 'bob', 'medium')}`;
    await writeFile(file, text);
    const registry = createFileRegistry({ file });
    expect((await registry.get(B))?.posture.trustLevel).toBe('medium');
    await registry.enroll(deviceInput('c'));
    await registry.revoke(A, new Date('2025-03-01T00:00:00.000Z'));
    const after = await readFile(file, 'utf8');
    expect(after).toContain('# Devices of the payments team.');
    expect(after).toContain("# alice's laptop");
    expect(after).toContain("# bob's desktop");
    expect(after).toContain(entry(B, 'bob', 'medium')); // untouched, byte for byte
    const data = parseYaml(after) as { devices: DeviceRecord[] };
    expect(data.devices.map((d) => d.id)).toEqual([A, B, fingerprint('c')]);
    expect(data.devices[0]?.revokedAt).toBe('2025-03-01T00:00:00.000Z');
    await registry.close();
  });

  it('writes JSON for a .json file', async () => {
    const file = tmpFile('json');
    const registry = createFileRegistry({ file });
    const record = await registry.enroll(deviceInput('a'));
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ devices: [record] });
    await registry.close();
    // and reads it back
    const again = createFileRegistry({ file });
    expect(await again.get(record.id)).toEqual(record);
    await again.close();
  });

  it('re-reads the file before writing: an entry added by hand since loading survives', async () => {
    const file = tmpFile('yaml');
    const registry = createFileRegistry({ file });
    await writeFile(file, `devices:\n${entry(A, 'alice')}`);
    await registry.enroll(deviceInput('b'));
    const data = parseYaml(await readFile(file, 'utf8')) as { devices: DeviceRecord[] };
    expect(data.devices.map((d) => d.id)).toEqual([A, B]);
    expect((await registry.get(A))?.owner).toBe('alice');
    await registry.close();
  });

  it('refuses to write over a broken file, and leaves it as it was', async () => {
    const file = tmpFile('yaml');
    const registry = createFileRegistry({ file });
    await registry.enroll(deviceInput('a'));
    const broken = `devices:\n  - id: [unclosed\n`;
    await writeFile(file, broken);
    await expect(registry.enroll(deviceInput('b'))).rejects.toBeInstanceOf(ConfigError);
    await expect(registry.revoke(A)).rejects.toThrow(`${file}:`);
    expect(await readFile(file, 'utf8')).toBe(broken);
    await registry.close();
  });

  it('writes atomically: no temp file is left, the mode is kept, concurrent writes all land', async () => {
    const sub = await mkdtemp(join(dir, 'atomic-'));
    const file = join(sub, 'devices.yaml');
    const registry = createFileRegistry({ file });
    await registry.enroll(deviceInput('first'));
    await chmod(file, 0o600);
    const seeds = Array.from({ length: 20 }, (_, i) => `d${i}`);
    await Promise.all(seeds.map((s) => registry.enroll(deviceInput(s))));
    expect(await readdir(sub)).toEqual(['devices.yaml']);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const reloaded = createFileRegistry({ file });
    expect(await reloaded.list()).toHaveLength(21);
    await Promise.all([registry.close(), reloaded.close()]);
  });

  it('a file it cannot read or write is DeviceRegistryUnavailableError, and memory is unchanged', async () => {
    const file = tmpFile('yaml');
    const registry = createFileRegistry({ file });
    await registry.enroll(deviceInput('a'));
    // A directory where the file was: reading fails whoever runs the test (root included).
    await unlink(file);
    await mkdir(join(file, 'x'), { recursive: true });
    try {
      const err = await registry.enroll(deviceInput('b')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DeviceRegistryUnavailableError);
      expect((err as Error).message).toBe(`${file}: cannot read device registry (EISDIR)`);
      expect(await registry.get(fingerprint('b'))).toBeUndefined();
      expect(await registry.get(fingerprint('a'))).toBeDefined();
    } finally {
      await registry.close();
      await rm(file, { recursive: true });
    }
  });

  it('a broken file at creation throws a ConfigError with file:line:col', async () => {
    const file = tmpFile('yaml');
    await writeFile(file, `devices:\n${entry(A, 'alice')}${entry(B, 'bob', 'max')}`);
    const err = (() => {
      try {
        createFileRegistry({ file });
      } catch (e) {
        return e;
      }
    })() as ConfigError;
    expect(err).toBeInstanceOf(ConfigError);
    // trustLevel of the second entry: line 2 + 10 lines of the first + 9.
    expect(err.message).toBe(`${file}:21:19: devices[1].posture.trustLevel: must be one of: "low", "medium", "high"`);
  });

  it.each([
    ['a YAML syntax error', 'devices:\n  - id: "unterminated\n', /devices-\d+\.yaml:\d+:\d+: Missing closing "quote/],
    ['a duplicate id', `devices:\n${entry(A, 'alice')}${entry(A, 'mallory')}`, /:12:9: devices\[1\]\.id: duplicate id, already enrolled by devices\[0\]/],
    ['a duplicate key', `devices:\n${entry(A, 'alice')}    owner: mallory\n`, /:12:5: .*[Mm]ap keys must be unique/],
    ['an unquoted version number', `devices:\n${entry(A, 'alice').replace('"14.5"', '14.5')}`, /:9:18: devices\[0\]\.posture\.osVersion: expected string, got number/],
    ['an unknown top-level field', `device: []\n`, /:1:1: device: unknown field "device"/],
    ['devices not a list', `devices: {}\n`, /:1:10: devices: expected a list/],
    ['an unknown field in an entry', `devices:\n${entry(A, 'alice').replace('    owner:', '    colour: blue\n    owner:')}`, /:3:5: devices\[0\]\.colour: unknown field "colour"/],
  ])('reports %s with its position', async (_, text, expected) => {
    const file = tmpFile('yaml');
    await writeFile(file, text);
    expect(() => createFileRegistry({ file })).toThrow(expected);
  });

  it('reports JSON syntax errors and duplicate keys with positions', async () => {
    const file = tmpFile('json');
    await writeFile(file, '{\n  "devices": [\n    {"id": 1,}\n  ]\n}\n');
    expect(() => createFileRegistry({ file })).toThrow(new RegExp(`^${file}:3:14: `));
    await writeFile(file, '{"devices": [], "devices": []}');
    expect(() => createFileRegistry({ file })).toThrow(/:1:17: .*unique/);
  });

  it('an empty file, or one with `devices:` and nothing else, is an empty registry', async () => {
    for (const text of ['', '# nothing yet\n', 'devices:\n', 'devices: []\n']) {
      const file = tmpFile('yaml');
      await writeFile(file, text);
      const registry = createFileRegistry({ file });
      expect(await registry.list()).toEqual([]);
      const record = await registry.enroll(deviceInput('a'));
      expect(parseYaml(await readFile(file, 'utf8'))).toEqual({ devices: [record] });
      await registry.close();
    }
  });

  describe('watching', () => {
    it('a second instance watching the file sees an enroll and a revoke by the first within 1 s', async () => {
      const file = tmpFile('yaml');
      const writer = createFileRegistry({ file });
      let reloads = 0;
      const reader = createFileRegistry({ file, watch: true, onReload: () => reloads++ });
      try {
        expect(await reader.get(A)).toBeUndefined();
        await writer.enroll(deviceInput('a'));
        const enrolled = await eventually(() => reader.get(A), (r) => r !== undefined);
        expect(enrolled.elapsedMs).toBeLessThan(1000);

        await writer.revoke(A);
        const revoked = await eventually(() => reader.get(A), (r) => r?.revokedAt !== undefined);
        expect(revoked.elapsedMs).toBeLessThan(1000);
        expect(reloads).toBeGreaterThanOrEqual(2);
      } finally {
        await Promise.all([writer.close(), reader.close()]);
      }
    });

    it('a broken edit keeps the last good registry and reports file:line:col; the fix is picked up', async () => {
      const file = tmpFile('yaml');
      await writeFile(file, `devices:\n${entry(A, 'alice')}`);
      const errors: Error[] = [];
      let reloads = 0;
      const registry = createFileRegistry({ file, watch: true, onError: (e) => errors.push(e), onReload: () => reloads++ });
      try {
        await writeFile(file, `devices:\n${entry(A, 'alice', 'ultra')}`);
        await eventually(async () => errors.length, (count) => count > 0);
        expect(errors[0]?.message).toBe(`${file}:11:19: devices[0].posture.trustLevel: must be one of: "low", "medium", "high"`);
        expect((await registry.get(A))?.posture.trustLevel).toBe('high');
        expect(reloads).toBe(0);

        await writeFile(file, `devices:\n${entry(A, 'alice', 'low')}`);
        await eventually(() => registry.get(A), (r) => r?.posture.trustLevel === 'low');
        expect(reloads).toBe(1);
        expect(errors).toHaveLength(1);
      } finally {
        await registry.close();
      }
    });

    it('picks up an atomic replace by another tool, and a deleted file as an empty registry', async () => {
      const file = tmpFile('yaml');
      const registry = createFileRegistry({ file, watch: true });
      try {
        const tmp = `${file}.editor-tmp`;
        await writeFile(tmp, `devices:\n${entry(B, 'bob')}`);
        await rename(tmp, file);
        await eventually(() => registry.get(B), (r) => r !== undefined);
        await unlink(file);
        await eventually(() => registry.list(), (all) => all.length === 0);
      } finally {
        await registry.close();
      }
    });

    it('stops reloading after close', async () => {
      const file = tmpFile('yaml');
      let reloads = 0;
      const registry = createFileRegistry({ file, watch: true, onReload: () => reloads++ });
      await registry.close();
      await writeFile(file, `devices:\n${entry(A, 'alice')}`);
      await sleep(150);
      expect(reloads).toBe(0);
      expect(await registry.get(A)).toBeUndefined();
    });
  });
});

// ── isStale ─────────────────────────────────────────────────────────────────────────

describe('isStale', () => {
  const record = (lastCheckIn: string): DeviceRecord => ({
    ...deviceInput('a', { posture: { ...deviceInput('a').posture, lastCheckIn } }),
    enrolledAt: '2025-01-01T00:00:00Z',
  });
  const now = new Date('2025-03-01T12:00:00Z');

  it('is fresh up to staleAfterS after the last check-in, stale after', () => {
    expect(isStale(record('2025-03-01T11:00:00Z'), now, 3600)).toBe(false);
    expect(isStale(record('2025-03-01T10:59:59Z'), now, 3600)).toBe(true);
  });

  it('reads offsets correctly', () => {
    expect(isStale(record('2025-03-01T12:30:00+01:00'), now, 3600)).toBe(false);
    expect(isStale(record('2025-03-01T06:59:59-04:00'), now, 3600)).toBe(true);
  });

  it('treats an unreadable check-in as stale', () => {
    expect(isStale(record('garbage'), now, 1e9)).toBe(true);
  });
});
