import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { startRedis } from '../../test/helpers/redis.ts';
import { createTier, type TierParams } from './gcra.ts';
import { createMemoryStore } from './memory-store.ts';
import { createRedisStore, rateLimitRedisOptions } from './redis-store.ts';
import { createResilientStore, type StoreState } from './resilient.ts';
import { item } from './store.contract.ts';
import { RateLimitStoreError, type LimitItem, type LimitOutcome, type RateLimitStore } from './store.ts';

const HOUR = 3_600_000;
// A bound a busy 2-core machine keeps: the deadline plus a late timer, never the seconds a
// queued command or a stalled server would take.
const MARGIN_MS = 1000;

function recorder() {
  const changes: [StoreState, RateLimitStoreError | undefined][] = [];
  const fallbacks: string[] = [];
  return {
    changes,
    fallbacks,
    onStateChange: (s: StoreState, e?: RateLimitStoreError) => changes.push([s, e]),
    onFallback: (mode: string, tier: string) => fallbacks.push(`${mode}:${tier}`),
  };
}

async function eventually(fn: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await fn())) {
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await p;
  return [v, performance.now() - t0];
}

const tierItem = (params: Omit<TierParams, 'periodMs'> & { periodMs?: number }, subject: string = randomUUID()): LimitItem =>
  item({ periodMs: HOUR, ...params }, ['subject'], { subject });

describe('resilient store against a real Redis', () => {
  it('Redis killed: each failure mode answers within the deadline; restarted on the same port, limiting resumes and the state flips back', async () => {
    const server = await startRedis();
    const redis = new Redis(server.url, { ...rateLimitRedisOptions, lazyConnect: true });
    redis.on('error', () => {});
    const rec = recorder();
    let restarted: Awaited<ReturnType<typeof startRedis>> | undefined;
    try {
      await redis.connect();
      const timeoutMs = 100;
      const store = createResilientStore({ primary: createRedisStore({ redis }), timeoutMs, expectedInstances: 2, ...rec });
      const allow = tierItem({ name: 'open', limit: 1, onStoreFailure: 'allow' });
      const deny = tierItem({ name: 'closed', limit: 1, onStoreFailure: 'deny' });
      const local = tierItem({ name: 'local', limit: 4, onStoreFailure: 'local' });
      // Healthy: Redis answers, nothing degraded.
      for (const i of [allow, deny, local]) {
        const [o] = await store.check([i]);
        expect(o!.allowed).toBe(true);
        expect(o!.degraded).toBeUndefined();
      }
      expect(store.state()).toBe('ok');

      await server.stop();
      const answers: LimitOutcome[] = [];
      for (let round = 0; round < 3; round++) {
        for (const i of [allow, deny, local]) {
          const [[o], ms] = await timed(store.check([i]));
          expect(ms).toBeLessThan(timeoutMs + MARGIN_MS);
          answers.push(o!);
        }
      }
      // allow: through; deny: refused as degraded (503, not 429).
      for (const o of answers.filter((a) => a.tier.name === 'open')) expect(o).toMatchObject({ allowed: true, degraded: 'allow' });
      for (const o of answers.filter((a) => a.tier.name === 'closed')) expect(o).toMatchObject({ allowed: false, degraded: 'deny' });
      // local: 4 per hour over 2 instances = 2 here, then refused on this instance's figures.
      const locals = answers.filter((a) => a.tier.name === 'local');
      expect(locals.map((o) => o.allowed)).toEqual([true, true, false]);
      for (const o of locals) expect(o.degraded).toBe('local');
      expect(locals[2]!.retryAfterMs).toBeGreaterThan(0);
      expect(store.state()).toBe('failing');
      // One report per change, not per failed call.
      expect(rec.changes.map(([s]) => s)).toEqual(['failing']);
      expect(rec.changes[0]![1]).toBeInstanceOf(RateLimitStoreError);
      expect(rec.fallbacks.filter((f) => f === 'allow:open')).toHaveLength(3);
      expect(rec.fallbacks.filter((f) => f === 'deny:closed')).toHaveLength(3);
      expect(rec.fallbacks.filter((f) => f === 'local:local')).toHaveLength(3);

      restarted = await startRedis({ port: server.port });
      const fresh = tierItem({ name: 'after', limit: 2, onStoreFailure: 'deny' });
      // ioredis reconnects by itself; the next check that reaches Redis flips the state back.
      await eventually(async () => (await store.check([fresh]))[0]!.degraded === undefined);
      expect(store.state()).toBe('ok');
      expect(rec.changes.map(([s]) => s)).toEqual(['failing', 'ok']);
      // Limiting resumes in Redis (the restarted server is empty: no persistence).
      const [again] = await store.check([fresh]);
      expect(again).toMatchObject({ allowed: true, remaining: 0 });
      const [refused] = await store.check([fresh]);
      expect(refused!.allowed).toBe(false);
      expect(refused!.degraded).toBeUndefined();
      expect(await redis.exists(fresh.key)).toBe(1);
    } finally {
      redis.disconnect();
      await server.stop();
      await restarted?.stop();
    }
  }, 30_000);

  it('a stalled Redis (SIGSTOP) never holds a call beyond the deadline', async () => {
    const server = await startRedis();
    const redis = new Redis(server.url, { ...rateLimitRedisOptions, lazyConnect: true });
    redis.on('error', () => {});
    const rec = recorder();
    let stopped = false;
    try {
      await redis.connect();
      const timeoutMs = 150;
      const store = createResilientStore({ primary: createRedisStore({ redis }), timeoutMs, ...rec });
      const lim = tierItem({ name: 'stall', limit: 100, onStoreFailure: 'allow' });
      expect((await store.check([lim]))[0]!.degraded).toBeUndefined();

      process.kill(server.pid, 'SIGSTOP');
      stopped = true;
      // The connection stays up and commands are written; only the deadline ends the wait.
      const [first, ms] = await timed(store.check([lim]));
      expect(first[0]).toMatchObject({ allowed: true, degraded: 'allow' });
      expect(ms).toBeGreaterThanOrEqual(timeoutMs - 5);
      expect(ms).toBeLessThan(timeoutMs + MARGIN_MS);
      const many = await timed(Promise.all(Array.from({ length: 50 }, () => store.check([lim]))));
      expect(many[1]).toBeLessThan(timeoutMs + MARGIN_MS);
      for (const [o] of many[0]) expect(o!.degraded).toBe('allow');
      expect(store.state()).toBe('failing');

      process.kill(server.pid, 'SIGCONT');
      stopped = false;
      await eventually(async () => (await store.check([lim]))[0]!.degraded === undefined);
      expect(rec.changes.map(([s]) => s)).toEqual(['failing', 'ok']);
      expect(rec.changes[0]![1]!.reason).toBe('timeout');
    } finally {
      if (stopped) process.kill(server.pid, 'SIGCONT');
      redis.disconnect();
      await server.stop();
    }
  }, 30_000);
});

/** A primary whose answers the test controls. */
function fakePrimary(answer: (items: readonly LimitItem[]) => Promise<LimitOutcome[]>) {
  let calls = 0;
  const store: RateLimitStore & { readonly calls: number } = {
    get calls() {
      return calls;
    },
    check(items) {
      calls++;
      return answer(items);
    },
    async close() {},
  };
  return store;
}

describe('resilient store', () => {
  it('passes answers through while the primary answers', async () => {
    const memory = createMemoryStore();
    const store = createResilientStore({ primary: memory });
    const lim = tierItem({ name: 't', limit: 1 });
    const [first] = await store.check([lim]);
    const [second] = await store.check([lim]);
    expect([first!.allowed, first!.degraded, second!.allowed, second!.degraded]).toEqual([true, undefined, false, undefined]);
    expect(store.state()).toBe('ok');
    expect(await store.check([])).toEqual([]);
  });

  it('times out a primary that never answers, then sends one probe at a time while failing', async () => {
    const pending: (() => void)[] = [];
    const primary = fakePrimary(() => new Promise<never>((_, reject) => pending.push(() => reject(new Error('late')))));
    const rec = recorder();
    const store = createResilientStore({ primary, timeoutMs: 30, ...rec });
    const lim = tierItem({ name: 't', limit: 10, onStoreFailure: 'allow' });
    const [first] = await store.check([lim]);
    expect(first).toMatchObject({ degraded: 'allow' });
    expect(rec.changes).toHaveLength(1);
    expect(rec.changes[0]![1]!.reason).toBe('timeout');
    expect(primary.calls).toBe(1);
    // Failing: of 20 concurrent checks one probes the primary, the others answer at once.
    const out = await Promise.all(Array.from({ length: 20 }, () => store.check([lim])));
    expect(primary.calls).toBe(2);
    for (const [o] of out) expect(o!.degraded).toBe('allow');
    for (const settle of pending) settle(); // late rejections are handled, not unhandled
  });

  it('uses the groups that answered and applies the failure mode to the rest only', async () => {
    const rec = recorder();
    const a = tierItem({ name: 'a', limit: 5, onStoreFailure: 'deny' });
    const b = tierItem({ name: 'b', limit: 5, onStoreFailure: 'deny' });
    const done: LimitOutcome = { key: a.key, tier: a.tier, allowed: true, remaining: 4, resetMs: 1, retryAfterMs: 0 };
    const primary = fakePrimary(async () => {
      throw new RateLimitStoreError('error', 'one node down', { partial: [done, undefined] });
    });
    const store = createResilientStore({ primary, ...rec });
    const out = await store.check([a, b]);
    expect(out[0]).toBe(done);
    expect(out[1]).toMatchObject({ allowed: false, degraded: 'deny' });
    expect(rec.fallbacks).toEqual(['deny:b']);
  });

  it('local mode divides limit and burst by the expected instances, at least 1 per period', async () => {
    let now = 0;
    const primary = fakePrimary(async () => {
      throw new Error('down');
    });
    const store = createResilientStore({ primary, expectedInstances: 3, now: () => now });
    const count = async (lim: LimitItem) => {
      let n = 0;
      for (let i = 0; i < 20; i++) if ((await store.check([lim]))[0]!.allowed) n++;
      return n;
    };
    expect(await count(tierItem({ name: 'ten', limit: 10 }))).toBe(3);
    expect(await count(tierItem({ name: 'one', limit: 1 }))).toBe(1);
    expect(await count(tierItem({ name: 'burst', limit: 30, burst: 9 }))).toBe(3);
    // The outcome names the configured tier, with the local figures.
    const lim = tierItem({ name: 'fig', limit: 9 });
    const [o] = await store.check([lim]);
    expect(o).toMatchObject({ allowed: true, remaining: 2, degraded: 'local' });
    expect(o!.tier).toBe(lim.tier);
    // A period later the local share has refilled.
    now += HOUR;
    expect(await count(tierItem({ name: 'ten', limit: 10 }, 'x'))).toBe(3);
  });

  it('rejects bad options', () => {
    const primary = createMemoryStore();
    expect(() => createResilientStore({ primary, timeoutMs: 0 })).toThrow(RangeError);
    expect(() => createResilientStore({ primary, expectedInstances: 0 })).toThrow(RangeError);
    expect(() => createTier({ name: 'x', limit: 1, periodMs: 1, onStoreFailure: 'maybe' as 'allow' })).toThrow(RangeError);
  });
});
