// The DPoP `jti` replay cache (RFC 9449 §11.1): "have I seen this key before, within its
// window?" answered and recorded in one step, so two requests racing with the same proof
// cannot both be told "first". Memory for one instance, Redis when several instances must
// see each other's proofs (otherwise a proof replayed to another instance is accepted).
import { hash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';

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
   * the ttl (e.g. 2 000 proofs/s × 70 s window = 140 000): a full cache forgets its oldest
   * entry, and an entry forgotten before its ttl is a proof that can be replayed. Those
   * are counted and reported through `onEarlyEviction`; alert on them. About 60 bytes of
   * heap per entry, whatever the key's length.
   */
  maxEntries: number;
  /** Milliseconds; defaults to performance.now (monotonic). */
  now?: () => number;
  /** Called each time a still-live entry is evicted to make room (see maxEntries). */
  onEarlyEviction?: (info: { remainingMs: number }) => void;
}

export interface MemoryReplayCache extends ReplayCache {
  /** Entries held, live or expired-but-not-yet-dropped. */
  readonly size: number;
  /** Live entries evicted before their ttl since creation: each one is a replay window. */
  readonly earlyEvictions: number;
  close(): Promise<void>;
}

// How long after the oldest entry expires the expired ones are dropped, in one batch.
const SWEEP_LAG_MS = 100;

/**
 * 96 bits of SHA-256 (12 bytes as a latin1 string): what the cache remembers instead of
 * the key. A jkt:jti key is 80 to 300 client-chosen characters; a full cache of them held
 * ~590 bytes of heap per entry (1M entries, lru-cache), this 62. A collision can only make
 * a fresh proof look replayed (a refusal, never an acceptance); at 1M entries its chance
 * per request is about 1e-23. Under 13 characters V8 copies a slice rather than pointing
 * into the whole digest, so nothing else stays alive; latin1 avoids a Buffer per call.
 */
function digestOf(key: string): string {
  return hash('sha256', key, 'binary').slice(0, 12); // 'binary' is Node's name for latin1
}

export function createMemoryReplayCache(opts: MemoryReplayCacheOptions): MemoryReplayCache {
  if (!Number.isSafeInteger(opts.maxEntries) || opts.maxEntries <= 0) {
    throw new RangeError(`replay cache maxEntries must be a positive integer, got ${opts.maxEntries}`);
  }
  const maxEntries = opts.maxEntries;
  const now = opts.now ?? (() => performance.now());
  const onEarlyEviction = opts.onEarlyEviction;
  let earlyEvictions = 0;

  // Digest → expiry time, in insertion order. Entries are never refreshed, so with one ttl
  // per cache (the DPoP case) insertion order is expiry order: expired entries are dropped
  // from the front as new ones arrive, and a full cache evicts the entry closest to expiry.
  // (lru-cache kept expired entries until the cache filled, and every key in full.)
  const entries = new Map<string, number>();
  // Expired entries are dropped in batches (SWEEP_LAG_MS): a Map iterator per batch, not per call.
  let sweepAt = 0;

  function dropExpired(t: number): void {
    for (const [id, expiresAt] of entries) {
      if (expiresAt > t) {
        sweepAt = expiresAt + SWEEP_LAG_MS;
        return;
      }
      entries.delete(id);
    }
    sweepAt = t + SWEEP_LAG_MS;
  }

  function evictOldest(t: number): void {
    const oldest = entries.entries().next().value;
    if (oldest === undefined) return;
    entries.delete(oldest[0]);
    const remainingMs = oldest[1] - t;
    if (remainingMs <= 0) return;
    earlyEvictions++;
    onEarlyEviction?.({ remainingMs });
  }

  return {
    get size() {
      return entries.size;
    },
    get earlyEvictions() {
      return earlyEvictions;
    },
    async checkAndRemember(key, ttlMs) {
      const ttl = checkTtl(ttlMs);
      const t = now();
      const id = digestOf(key);
      const expiresAt = entries.get(id);
      if (expiresAt !== undefined && t < expiresAt) return false;
      // An expired entry is re-inserted at the end, so the order stays expiry order.
      if (expiresAt !== undefined) entries.delete(id);
      if (t >= sweepAt || entries.size >= maxEntries) dropExpired(t);
      if (entries.size >= maxEntries) evictOldest(t);
      // Whole milliseconds (rounded up: a key kept a little longer is harmless) are small
      // integers the Map holds inline, not a heap-allocated number per entry.
      entries.set(id, Math.ceil(t + ttl));
      return true;
    },
    async close() {
      entries.clear();
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
