// The DPoP `jti` replay cache (RFC 9449 §11.1): "have I seen this key before, within its
// window?" answered and recorded in one step, so two requests racing with the same proof
// cannot both be told "first". Memory for one instance, Redis when several instances must
// see each other's proofs (otherwise a proof replayed to another instance is accepted).
import type { Cluster, Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';

export interface ReplayCache {
  /** true if first seen (and now remembered for ttlMs), false if seen before */
  checkAndRemember(key: string, ttlMs: number): Promise<boolean>;
  close?(): Promise<void>;
}

/**
 * The store could not answer (Redis down, slow or replying nonsense). The key was not
 * checked, so the caller must apply its declared failure mode; treating this as "first
 * seen" would let every replay through while Redis is down.
 */
export class ReplayCacheUnavailableError extends Error {
  readonly reason: 'timeout' | 'error';

  constructor(reason: 'timeout' | 'error', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ReplayCacheUnavailableError';
    this.reason = reason;
  }
}

function checkTtl(ttlMs: number): number {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new RangeError(`replay cache ttlMs must be a positive number, got ${ttlMs}`);
  // Round up: remembering a key a fraction of a millisecond too long is harmless, too short is not.
  return Math.ceil(ttlMs);
}

// ---------------------------------------------------------------------------------------
// Memory

export interface MemoryReplayCacheOptions {
  /**
   * Upper bound on remembered keys. It must exceed the peak rate of accepted proofs times
   * the ttl (e.g. 2 000 proofs/s × 70 s window = 140 000): a full cache evicts its oldest
   * entry, and an entry evicted before its ttl is a proof that can be replayed. Evictions
   * of live entries are counted and reported through `onEarlyEviction`; alert on them.
   */
  maxEntries: number;
  /** Milliseconds; defaults to performance.now (monotonic). */
  now?: () => number;
  /** Called each time a still-live entry is evicted to make room (see maxEntries). */
  onEarlyEviction?: (info: { key: string; remainingMs: number }) => void;
}

export interface MemoryReplayCache extends ReplayCache {
  /** Entries held, live or expired-but-not-yet-evicted. */
  readonly size: number;
  /** Live entries evicted before their ttl since creation: each one is a replay window. */
  readonly earlyEvictions: number;
  close(): Promise<void>;
}

export function createMemoryReplayCache(opts: MemoryReplayCacheOptions): MemoryReplayCache {
  if (!Number.isSafeInteger(opts.maxEntries) || opts.maxEntries <= 0) {
    throw new RangeError(`replay cache maxEntries must be a positive integer, got ${opts.maxEntries}`);
  }
  const now = opts.now ?? (() => performance.now());
  const onEarlyEviction = opts.onEarlyEviction;
  let earlyEvictions = 0;

  // The value is the entry's expiry time. lru-cache's own TTL is not used: it is only
  // enabled by a constructor-wide default, treats a start time of 0 as "no TTL", and
  // caches the clock reading, all of which blur the exact window under an injected clock.
  // Entries are read with peek() and never refreshed, so with one ttl per cache (the DPoP
  // case) LRU order is expiry order and the evicted entry is always the closest to expiry.
  const lru = new LRUCache<string, number>({
    max: opts.maxEntries,
    dispose(expiresAt, key, reason) {
      if (reason !== 'evict') return;
      const remainingMs = expiresAt - now();
      if (remainingMs <= 0) return;
      earlyEvictions++;
      onEarlyEviction?.({ key, remainingMs });
    },
  });

  return {
    get size() {
      return lru.size;
    },
    get earlyEvictions() {
      return earlyEvictions;
    },
    async checkAndRemember(key, ttlMs) {
      const ttl = checkTtl(ttlMs);
      const t = now();
      const expiresAt = lru.peek(key);
      if (expiresAt !== undefined && t < expiresAt) return false;
      lru.set(key, t + ttl);
      return true;
    },
    async close() {
      lru.clear();
    },
  };
}

// ---------------------------------------------------------------------------------------
// Redis

export interface RedisReplayCacheOptions {
  /** Owned by the caller, who also closes it; the cache only issues commands. */
  redis: Redis | Cluster;
  /** Namespaces the keys, e.g. "ztgw:dpop:jti:". */
  prefix: string;
  /**
   * Per-call deadline. ioredis queues commands while reconnecting (and retries them), so
   * without a deadline a request would hang for as long as Redis is down.
   */
  timeoutMs: number;
}

export function createRedisReplayCache(opts: RedisReplayCacheOptions): ReplayCache {
  const { redis, prefix, timeoutMs } = opts;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`replay cache timeoutMs must be positive, got ${timeoutMs}`);

  return {
    async checkAndRemember(key, ttlMs) {
      const ttl = checkTtl(ttlMs);
      let reply: unknown;
      try {
        // One round trip, atomic across instances: NX sets only if absent, PX expires it.
        reply = await withDeadline(redis.set(prefix + key, '1', 'PX', ttl, 'NX'), timeoutMs);
      } catch (err) {
        if (err instanceof ReplayCacheUnavailableError) throw err;
        throw new ReplayCacheUnavailableError('error', 'replay cache: redis command failed', { cause: err });
      }
      if (reply === 'OK') return true;
      if (reply === null) return false;
      throw new ReplayCacheUnavailableError('error', `replay cache: unexpected reply to SET NX: ${String(reply)}`);
    },
  };
}

function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ReplayCacheUnavailableError('timeout', `replay cache: no answer from redis within ${ms} ms`)), ms);
  });
  // race() keeps a handler on `work`, so its late rejection is not unhandled. A SET that
  // lands after the deadline only remembers a jti of a request already refused.
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
