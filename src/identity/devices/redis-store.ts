// The shared device registry: Redis, for gateways that run as more than one instance.
//
// Layout (prefix defaults to "ztgw:device:"):
//   prefix + <id>     hash: owner, enrolledAt, [revokedAt], [label], posture (JSON)
//   prefix + "index"  set of enrolled ids, for list()
//   prefix + "events" pub/sub channel: the id of every device enrolled or revoked
// An id is always 43 characters, so it never collides with "index" or "events".
//
// A revocation has to reach every instance quickly, and `get` is on the request path,
// so reads go through a small per-instance LRU that holds an answer for at most
// cacheTtlMs (default 500). Two mechanisms bound how stale it can be:
// - enroll and revoke PUBLISH the id; each instance's subscriber (its own connection,
//   a subscribed connection can issue nothing else) drops that entry at once;
// - if a message is missed (subscriber reconnecting, pub/sub disabled), the entry
//   expires anyway: a revocation is seen within cacheTtlMs + one round trip, < 1 s.
// Every Redis failure, timeout or corrupt record rejects with
// DeviceRegistryUnavailableError; it is never read as "not enrolled" or "not revoked".
// The caller's failure mode decides what a request sees then.
import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import {
  byId,
  checkRevokeId,
  DeviceRegistryUnavailableError,
  isDeviceId,
  prepareEnrollment,
  validateDevice,
  type DeviceRecord,
  type DeviceRegistry,
  type EnrollInput,
} from './registry.ts';

export interface RedisRegistryOptions {
  /** Used for commands; not closed by close(), the caller owns it. */
  redis: Redis;
  prefix?: string;
  /** How long a cached answer (a record or "not enrolled") may be served. Default 500. */
  cacheTtlMs?: number;
  /** Entries in the local cache. Default 10 000. */
  cacheMax?: number;
  /** Subscribe to invalidations on a duplicate connection. Default true; without it only the TTL bounds staleness. */
  pubsub?: boolean;
  /**
   * Upper bound on one registry call. ioredis retries a command across reconnects (20
   * times by default), which can hold a request for seconds; past this the call rejects
   * with DeviceRegistryUnavailableError. A healthy round trip is about a millisecond.
   * Default 500.
   */
  timeoutMs?: number;
  /** Clock for default enrolledAt and revokedAt. */
  now?: () => Date;
  /** Errors of the subscriber connection (reported, retried by ioredis). Default: process.emitWarning. */
  onError?(err: Error): void;
}

export interface RedisDeviceRegistry extends DeviceRegistry {
  /**
   * Resolves once invalidations are first subscribed (at once without pubsub); stays
   * pending while Redis is unreachable. The registry answers before this, with the TTL
   * as the only bound on staleness, so a gateway need not wait for it to start.
   */
  ready(): Promise<void>;
}

// Atomic: never creates a hash for an unknown id, keeps the first revokedAt, and
// publishes only when something changed. KEYS[1] device hash; ARGV revokedAt, channel, id.
const REVOKE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'revokedAt', ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
`;
const REVOKE_COMMAND = 'ztgwDeviceRevoke';
type WithRevoke = { [REVOKE_COMMAND](key: string, revokedAt: string, channel: string, id: string): Promise<number> };

// Cached answers are boxed: "not enrolled" is an answer too, and lru-cache cannot hold undefined.
interface Cached {
  record: DeviceRecord | undefined;
}

export function createRedisRegistry(opts: RedisRegistryOptions): RedisDeviceRegistry {
  const { redis } = opts;
  const prefix = opts.prefix ?? 'ztgw:device:';
  const cacheTtlMs = opts.cacheTtlMs ?? 500;
  const timeoutMs = opts.timeoutMs ?? 500;
  const now = opts.now ?? (() => new Date());
  const onError = opts.onError ?? ((err: Error) => process.emitWarning(err));
  if (!(cacheTtlMs >= 0)) throw new RangeError(`cacheTtlMs must be >= 0, got ${cacheTtlMs}`);
  if (!(timeoutMs > 0)) throw new RangeError(`timeoutMs must be > 0, got ${timeoutMs}`);

  let closed = false;
  const keyOf = (id: string) => prefix + id;
  const indexKey = `${prefix}index`;
  const channel = `${prefix}events`;

  // Loaded once per connection and called by SHA (ioredis falls back to EVAL on NOSCRIPT).
  redis.defineCommand(REVOKE_COMMAND, { numberOfKeys: 1, lua: REVOKE_LUA });

  // lru-cache reads a ttl of 0 as "no ttl", so a zero TTL means no cache at all.
  const cache =
    cacheTtlMs > 0
      ? new LRUCache<string, Cached>({ max: opts.cacheMax ?? 10_000, ttl: cacheTtlMs })
      : undefined;
  const inflight = new Map<string, Promise<DeviceRecord | undefined>>();
  // Bumped by every invalidation. A read that started before one does not cache its
  // answer: it may be the state from just before the revoke it raced with.
  let generation = 0;
  const invalidate = (id?: string) => {
    generation++;
    if (id === undefined) {
      cache?.clear();
      inflight.clear();
    } else {
      cache?.delete(id);
      inflight.delete(id);
    }
  };

  async function call<T>(what: string, op: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DeviceRegistryUnavailableError(`device registry: Redis ${what} timed out after ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([op(), timeout]);
    } catch (err) {
      if (err instanceof DeviceRegistryUnavailableError) throw err;
      throw new DeviceRegistryUnavailableError(`device registry: Redis ${what} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  let sub: Redis | undefined;
  let subscribed: Promise<void> = Promise.resolve();
  if (opts.pubsub ?? true) {
    // Its own connection: a subscribed connection can issue nothing else. It subscribes
    // on every (re)connect itself rather than relying on autoResubscribe, which only
    // replays subscriptions that once succeeded (a first SUBSCRIBE lost to an outage
    // would leave pub/sub off for good), and with no command timeout of its own.
    const s = redis.duplicate({ lazyConnect: false, autoResubscribe: false, autoResendUnfulfilledCommands: false, commandTimeout: undefined });
    sub = s;
    let markSubscribed!: () => void;
    subscribed = new Promise<void>((resolve) => (markSubscribed = resolve));
    s.on('message', (ch: string, id: string) => {
      if (ch === channel) invalidate(id);
    });
    // ioredis emits an error per reconnect attempt; one report per outage is enough.
    let healthy = true;
    s.on('ready', () => {
      healthy = true;
      s.subscribe(channel).then(
        () => {
          // Messages sent while the subscriber was away are lost: start from an empty cache.
          invalidate();
          markSubscribed();
        },
        (err: unknown) => {
          if (!closed) onError(new Error(`device registry: cannot subscribe to ${channel}: ${(err as Error).message}`, { cause: err }));
        },
      );
    });
    s.on('error', (err: Error) => {
      if (!healthy) return;
      healthy = false;
      onError(new Error(`device registry: invalidation subscriber down, revocations rely on the ${cacheTtlMs} ms cache TTL: ${err.message}`, { cause: err }));
    });
  }

  function fetch(id: string): Promise<DeviceRecord | undefined> {
    const started = generation;
    const p = call('HGETALL', () => redis.hgetall(keyOf(id)))
      .then((hash) => {
        const record = fromHash(id, hash);
        if (cache && generation === started) cache.set(id, { record });
        return record;
      })
      .finally(() => {
        if (inflight.get(id) === p) inflight.delete(id);
      });
    inflight.set(id, p);
    return p;
  }

  return {
    async get(id) {
      // The gateway computes ids itself; anything else cannot be enrolled, so no round trip.
      if (!isDeviceId(id)) return undefined;
      const hit = cache?.get(id);
      if (hit !== undefined) return hit.record;
      // Concurrent requests from one device share one round trip.
      return inflight.get(id) ?? fetch(id);
    },

    async list() {
      const ids = await call('SMEMBERS', () => redis.smembers(indexKey));
      if (ids.length === 0) return [];
      const replies = await call('HGETALL', () => {
        const pipeline = redis.pipeline();
        for (const id of ids) pipeline.hgetall(keyOf(id));
        return pipeline.exec();
      });
      const records: DeviceRecord[] = [];
      ids.forEach((id, i) => {
        const [err, hash] = replies?.[i] ?? [new Error('no reply'), undefined];
        if (err) throw new DeviceRegistryUnavailableError(`device registry: Redis HGETALL failed: ${err.message}`, { cause: err });
        // An index entry whose hash was deleted by hand is not a device.
        const record = isDeviceId(id) ? fromHash(id, hash as Record<string, string>) : undefined;
        if (record) records.push(record);
      });
      return records.sort(byId);
    },

    async enroll(input: EnrollInput) {
      const record = prepareEnrollment(input, now());
      const key = keyOf(record.id);
      // One transaction: the old hash (and its revokedAt) goes, the new one and the index
      // entry appear, and the invalidation is published, all or nothing.
      const replies = await call('MULTI enroll', () =>
        redis.multi().del(key).hset(key, toHash(record)).sadd(indexKey, record.id).publish(channel, record.id).exec(),
      );
      const failed = replies?.find(([err]) => err);
      if (!replies || failed) {
        const cause = failed?.[0] ?? new Error('transaction aborted');
        throw new DeviceRegistryUnavailableError(`device registry: Redis enroll failed: ${cause.message}`, { cause });
      }
      invalidate(record.id);
      return record;
    },

    async revoke(id, at) {
      checkRevokeId(id);
      const when = (at ?? now()).toISOString();
      const known = await call('revoke', () => (redis as unknown as WithRevoke)[REVOKE_COMMAND](keyOf(id), when, channel, id));
      invalidate(id);
      return known === 1;
    },

    ready() {
      return subscribed;
    },

    async close() {
      if (closed) return;
      closed = true;
      sub?.disconnect();
      invalidate();
    },
  };
}

function toHash(r: DeviceRecord): Record<string, string> {
  const hash: Record<string, string> = { owner: r.owner, enrolledAt: r.enrolledAt, posture: JSON.stringify(r.posture) };
  if (r.label !== undefined) hash.label = r.label;
  return hash;
}

/**
 * A hash back into a record, validated: Redis is a boundary too (anyone with access can
 * HSET). A record that does not validate is an error, never "not enrolled". Fields this
 * version does not know are ignored, so a rolling upgrade that adds one keeps working.
 */
function fromHash(id: string, hash: Record<string, string> | undefined): DeviceRecord | undefined {
  if (!hash || Object.keys(hash).length === 0) return undefined;
  let posture: unknown;
  try {
    posture = JSON.parse(hash.posture ?? 'null');
  } catch (err) {
    throw new DeviceRegistryUnavailableError(`device registry: record ${id} in Redis has unreadable posture JSON`, { cause: err });
  }
  const result = validateDevice({
    id,
    owner: hash.owner,
    posture,
    enrolledAt: hash.enrolledAt,
    ...(hash.revokedAt !== undefined && { revokedAt: hash.revokedAt }),
    ...(hash.label !== undefined && { label: hash.label }),
  });
  if (!result.ok) {
    const why = result.issues.map((i) => `${i.field}: ${i.message}`).join('; ');
    throw new DeviceRegistryUnavailableError(`device registry: record ${id} in Redis is invalid: ${why}`);
  }
  return result.record;
}
