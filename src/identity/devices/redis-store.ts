// The shared device registry: Redis, for gateways that run as more than one instance.
//
// Layout (prefix defaults to "ztgw:device:"):
//   prefix + <id>     hash: owner, [issuer], enrolledAt, [revokedAt], [label], posture (JSON)
//   prefix + "index"  set of enrolled ids, for list()
//   prefix + "events" pub/sub channel: the id of every device enrolled, updated or revoked
// An id is always 43 characters, so it never collides with "index" or "events".
//
// An MDM sync may write posture directly: `HSET <prefix><id> posture '<JSON of all six
// posture fields>'` on an existing hash (never DEL or HDEL: revokedAt lives in the same
// hash), then `PUBLISH <prefix>events <id>`; without the PUBLISH every instance still
// sees it once its cached answer expires (cacheTtlMs). A posture that does not validate
// makes the device's requests fail closed (503), never pass.
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
  applyUpdate,
  byId,
  checkId,
  checkRevokeId,
  DeviceRegistryUnavailableError,
  isDeviceId,
  prepareEnrollment,
  validateDevice,
  type DeviceRecord,
  type DeviceRegistry,
  type DeviceUpdate,
  type EnrollInput,
  type EnrollOptions,
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

// Atomic: replaces the hash, keeping revokedAt unless ARGV[1] is "1" (reinstate), adds the
// index entry and publishes. KEYS[1] device hash, KEYS[2] index; ARGV reinstate, channel,
// id, then field/value pairs. Returns the revokedAt kept, or false.
const ENROLL_LUA = `
local revoked = false
if ARGV[1] ~= '1' then revoked = redis.call('HGET', KEYS[1], 'revokedAt') end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if revoked then redis.call('HSET', KEYS[1], 'revokedAt', revoked) end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return revoked
`;
const ENROLL_COMMAND = 'ztgwDeviceEnroll';

// Compare-and-set of the fields an update changes: applied only if the hash still holds
// what the caller read (ARGV[3], its posture JSON, and ARGV[4], its label or '' for none),
// so a concurrent update is retried rather than overwritten, and a revocation is never
// touched. KEYS[1] device hash; ARGV channel, id, old posture, old label, new posture,
// new label ('' for none). Returns -1 unknown, 0 changed meanwhile, 1 done.
const UPDATE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'posture') ~= ARGV[3] then return 0 end
if (redis.call('HGET', KEYS[1], 'label') or '') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'posture', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'label', ARGV[6]) end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
`;
const UPDATE_COMMAND = 'ztgwDeviceUpdate';
type WithScripts = {
  [ENROLL_COMMAND](key: string, index: string, reinstate: string, channel: string, id: string, ...fields: string[]): Promise<string | null>;
  [UPDATE_COMMAND](key: string, channel: string, id: string, oldPosture: string, oldLabel: string, posture: string, label: string): Promise<number>;
};

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
  redis.defineCommand(ENROLL_COMMAND, { numberOfKeys: 2, lua: ENROLL_LUA });
  redis.defineCommand(UPDATE_COMMAND, { numberOfKeys: 1, lua: UPDATE_LUA });
  const scripts = redis as unknown as WithScripts;

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

    async enroll(input: EnrollInput, options?: EnrollOptions) {
      const record = prepareEnrollment(input, now());
      // One script: the old hash goes (its revokedAt kept unless reinstated), the new one
      // and the index entry appear, and the invalidation is published, all or nothing.
      const fields = Object.entries(toHash(record)).flat();
      const revokedAt = await call('enroll', () =>
        scripts[ENROLL_COMMAND](keyOf(record.id), indexKey, options?.reinstate === true ? '1' : '0', channel, record.id, ...fields),
      );
      invalidate(record.id);
      if (typeof revokedAt !== 'string') return record;
      return parseStored(record.id, { ...toHash(record), revokedAt });
    },

    async update(id: string, change: DeviceUpdate) {
      checkId(id);
      // Read, change, and write back only if nobody changed it meanwhile; a few tries
      // cover concurrent check-ins of one device.
      for (let attempt = 0; attempt < 5; attempt++) {
        const hash = await call('HGETALL', () => redis.hgetall(keyOf(id)));
        const current = fromHash(id, hash);
        if (current === undefined) return undefined;
        const next = applyUpdate(current, change);
        const done = await call('update', () =>
          scripts[UPDATE_COMMAND](keyOf(id), channel, id, hash.posture!, hash.label ?? '', JSON.stringify(next.posture), next.label ?? ''),
        );
        invalidate(id);
        if (done === -1) return undefined;
        if (done === 1) return next;
      }
      throw new DeviceRegistryUnavailableError(`device registry: update of ${id} kept racing with other writers`);
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
  if (r.issuer !== undefined) hash.issuer = r.issuer;
  if (r.label !== undefined) hash.label = r.label;
  return hash;
}

/**
 * A hash back into a record, validated: Redis is a boundary too (anyone with access can
 * HSET). A record that does not validate is an error, never "not enrolled". Fields this
 * version does not know are ignored, so a rolling upgrade that adds one keeps working.
 */
function parseStored(id: string, hash: Record<string, string>): DeviceRecord {
  return fromHash(id, hash)!;
}

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
    ...(hash.issuer !== undefined && { issuer: hash.issuer }),
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
