// The DPoP `jti` replay cache (RFC 9449 §11.1): "have I seen this key before, within its
// window?" answered and recorded in one step, so two requests racing with the same proof
// cannot both be told "first". Memory for one instance, Redis when several instances must
// see each other's proofs (otherwise a proof replayed to another instance is accepted).
import { hash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';

export interface ReplayCache {
  /**
   * true if first seen (and now remembered for ttlMs), false if seen before. `partition`
   * names whose key it is (the DPoP jkt): a store may bound what one partition holds.
   */
  checkAndRemember(key: string, ttlMs: number, partition?: string): Promise<boolean>;
  close?(): Promise<void>;
}

/**
 * timeout, error: Redis did not answer, or answered nonsense. full: the memory cache holds
 * only live entries. partition_full: this partition (DPoP key) holds its whole share.
 */
export type ReplayCacheFailure = 'timeout' | 'error' | 'full' | 'partition_full';

/**
 * The store could not answer (Redis down, slow or replying nonsense), or could not
 * remember the key without forgetting a live one. The key was not recorded, so the caller
 * must apply its declared failure mode; treating this as "first seen" would let every
 * replay through while Redis is down or the cache is full.
 */
export class ReplayCacheUnavailableError extends Error {
  readonly reason: ReplayCacheFailure;

  constructor(reason: ReplayCacheFailure, message: string, options?: { cause?: unknown }) {
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
   * Upper bound on remembered keys. A full cache of live entries refuses new keys (rejects
   * with ReplayCacheUnavailableError, reason "full") rather than forgetting a live one: an
   * entry forgotten before its ttl is a proof that can be replayed (CVE-2026-41707, Spring
   * Security's DPoP support). Size it above the peak rate of accepted proofs times the ttl
   * (e.g. 2 000 proofs/s × 66 s window = 132 000). About 72 bytes of heap per entry (1M entries
   * measured), whatever the key's length.
   */
  maxEntries: number;
  /**
   * Live entries one partition (a DPoP key, jkt) may hold; over it that partition's new
   * keys are refused (reason "partition_full") while other partitions go on. Stops one
   * client from filling the cache for everyone. Default maxEntries (no per-partition bound).
   */
  maxEntriesPerPartition?: number;
  /** Milliseconds; defaults to performance.now (monotonic). */
  now?: () => number;
  /** Called for each key refused for want of room (after the check that it is not a replay). */
  onRefused?: (info: { reason: 'full' | 'partition_full'; size: number; partition: string }) => void;
}

export interface MemoryReplayCache extends ReplayCache {
  /** Entries held, live or expired-but-not-yet-dropped. */
  readonly size: number;
  /** Keys refused since creation because the cache or their partition was full. */
  readonly refusals: number;
  close(): Promise<void>;
}

// How long after the oldest entry expires the expired ones are dropped, in one batch.
const SWEEP_LAG_MS = 100;

/**
 * 96 bits of SHA-256 (12 bytes as a latin1 string): what the cache remembers instead of
 * the key. A jkt:jti key is 80 to 300 client-chosen characters; a full cache of them held
 * ~590 bytes of heap per entry (1M entries, lru-cache), this 62 (72 with the partition
 * queue below). A collision can only make
 * a fresh proof look replayed (a refusal, never an acceptance); at 1M entries its chance
 * per request is about 1e-23. Under 13 characters V8 copies a slice rather than pointing
 * into the whole digest, so nothing else stays alive; latin1 avoids a Buffer per call.
 */
function digestOf(key: string): string {
  return hash('sha256', key, 'binary').slice(0, 12); // 'binary' is Node's name for latin1
}

/** A partition's count of entries held; one object per partition with entries, shared by them. */
interface Partition {
  readonly name: string;
  held: number;
}

export function createMemoryReplayCache(opts: MemoryReplayCacheOptions): MemoryReplayCache {
  if (!Number.isSafeInteger(opts.maxEntries) || opts.maxEntries <= 0) {
    throw new RangeError(`replay cache maxEntries must be a positive integer, got ${opts.maxEntries}`);
  }
  const maxEntries = opts.maxEntries;
  const perPartition = opts.maxEntriesPerPartition ?? maxEntries;
  if (!Number.isSafeInteger(perPartition) || perPartition <= 0) {
    throw new RangeError(`replay cache maxEntriesPerPartition must be a positive integer, got ${perPartition}`);
  }
  const now = opts.now ?? (() => performance.now());
  const onRefused = opts.onRefused;
  let refusals = 0;

  // Digest → expiry time, in insertion order. Entries are never refreshed, so with one ttl
  // per cache (the DPoP case) insertion order is expiry order: expired entries are dropped
  // from the front as new ones arrive. Nothing live is ever dropped.
  const entries = new Map<string, number>();
  // The partition of each entry, in the same order (a queue from `head`): entries leave
  // only from the front, both structures together, so dropping one names its partition
  // without a per-entry object. 8 bytes per entry.
  let owners: (Partition | undefined)[] = [];
  let head = 0;
  const partitions = new Map<string, Partition>();
  // Expired entries are dropped in batches (SWEEP_LAG_MS): a Map iterator per batch, not per call.
  let sweepAt = 0;

  function dropExpired(t: number): void {
    for (const [id, expiresAt] of entries) {
      if (expiresAt > t) {
        sweepAt = expiresAt + SWEEP_LAG_MS;
        break;
      }
      entries.delete(id);
      const owner = owners[head]!;
      owners[head++] = undefined;
      if (--owner.held === 0) partitions.delete(owner.name);
    }
    if (entries.size === 0) sweepAt = t + SWEEP_LAG_MS;
    // Compact the queue once its dead front is half of it: amortised O(1) per entry.
    if (head > 1024 && head * 2 > owners.length) {
      owners = owners.slice(head);
      head = 0;
    }
  }

  function refuse(reason: 'full' | 'partition_full', partition: string): never {
    refusals++;
    onRefused?.({ reason, size: entries.size, partition });
    throw new ReplayCacheUnavailableError(
      reason,
      reason === 'full'
        ? `replay cache: all ${maxEntries} entries are live; refusing rather than forgetting one`
        : `replay cache: this key already holds its ${perPartition} live entries`,
    );
  }

  return {
    get size() {
      return entries.size;
    },
    get refusals() {
      return refusals;
    },
    async checkAndRemember(key, ttlMs, partition = '') {
      const ttl = checkTtl(ttlMs);
      const t = now();
      const id = digestOf(key);
      const expiresAt = entries.get(id);
      // A replay is answered as one even when the cache is full: the refusal below is for
      // keys it has not seen.
      if (expiresAt !== undefined && t < expiresAt) return false;
      if (t >= sweepAt || expiresAt !== undefined) dropExpired(t);
      if (expiresAt !== undefined && entries.has(id)) {
        // Expired but still held behind a longer-lived entry (the ttl changed): renewed in
        // place, so the queue keeps naming the right partition for each position.
        entries.set(id, Math.ceil(t + ttl));
        return true;
      }
      let owner = partitions.get(partition);
      if (owner !== undefined && owner.held >= perPartition && perPartition < maxEntries) {
        dropExpired(t);
        owner = partitions.get(partition);
        if (owner !== undefined && owner.held >= perPartition) refuse('partition_full', partition);
      }
      if (entries.size >= maxEntries) {
        dropExpired(t);
        if (entries.size >= maxEntries) refuse('full', partition);
        owner = partitions.get(partition);
      }
      if (owner === undefined) {
        owner = { name: partition, held: 0 };
        partitions.set(partition, owner);
      }
      owner.held++;
      owners.push(owner);
      // Whole milliseconds (rounded up: a key kept a little longer is harmless) are small
      // integers the Map holds inline, not a heap-allocated number per entry.
      entries.set(id, Math.ceil(t + ttl));
      return true;
    },
    async close() {
      entries.clear();
      partitions.clear();
      owners = [];
      head = 0;
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
    // No per-partition share here: Redis keeps every key until its PX expiry (with
    // `maxmemory-policy noeviction` a full Redis refuses the SET, an error: fail closed),
    // and a shared count per jkt would cost a second round trip or a script per proof.
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
