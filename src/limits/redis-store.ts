// The shared rate-limit store: GCRA in one Lua script per group of keys, so every gateway
// instance sees the same counts and a check is exact under any concurrency (Redis runs a
// script alone). The script is gcra.ts's checkGroup line for line.
//
// - Loaded once: ioredis defineCommand sends EVAL the first time on each connection and
//   EVALSHA after, resending on NOSCRIPT (a restarted or flushed Redis), as
//   @fastify/rate-limit's RedisStore does.
// - One round trip, and one script call per event-loop turn: on a single Redis every check
//   made in the same turn (the requests that arrived together) goes out as ONE script call
//   that runs their groups one after another (BATCH_LUA). A call per check cost the gateway
//   ~100 µs of CPU per request under load (a command, a write, a reply to parse each; Redis
//   a script run and a TIME each): 0.67 of the route's throughput without the tier. On a
//   Cluster the keys of a batch live on many slots, so each group is its own call, all issued
//   at once (with enableAutoPipelining ioredis batches them per node).
// - Clock: the script reads redis.call('TIME'), so gateways with skewed clocks still agree.
//   Redis 7 replicates a script's effects, not the script, so TIME is allowed before writes.
// - O(1) per key: one GET and at most one SET with PX; an idle key expires when its
//   bucket is full again, so Redis holds only keys being limited.
// - Replies are integers only: Lua numbers become Redis integers by truncation.
//
// No deadline here: wrap the store in resilient.ts, which bounds every call and applies
// the tiers' failure modes. Create the client with rateLimitRedisOptions (below).
import type { Cluster, Redis, RedisOptions } from 'ioredis';
import { fillOutcomes, groupItems, RateLimitStoreError, type Group, type LimitOutcome, type RateLimitStore } from './store.ts';

// KEYS[i]: a bucket. ARGV[2i-1]: its emission interval T, ARGV[2i]: its tolerance burst*T,
// both integer microseconds. Returns per key: allowed (1/0), remaining, reset µs, retry µs.
// tats are stored as decimal integers (string.format %d): tostring() would keep only 14
// significant digits of a 16-digit microsecond time.
export const GCRA_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local base = {}
local admitted = true
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  base[i] = tat
  if tat + tonumber(ARGV[2 * i - 1]) - now > tonumber(ARGV[2 * i]) then admitted = false end
end
local out = {}
for i = 1, n do
  local T = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local newTat = base[i] + T
  local allowed = newTat - now <= tau
  local tat = base[i]
  if admitted then
    tat = newTat
    redis.call('SET', KEYS[i], string.format('%d', newTat), 'PX', math.ceil((newTat - now) / 1000))
  end
  local remaining = math.floor((tau - (tat - now)) / T)
  if remaining < 0 then remaining = 0 end
  out[4 * i - 3] = allowed and 1 or 0
  out[4 * i - 2] = remaining
  out[4 * i - 1] = tat - now
  out[4 * i] = allowed and 0 or (newTat - now - tau)
end
return out
`;

// The same check for many groups in one call: ARGV[1] is the number of groups, then per
// group its key count n followed by n (T, tolerance) pairs; KEYS are the groups' keys in
// order. Each group is all-or-nothing as in GCRA_LUA, and groups run in order, so two
// requests of one key in one batch see each other as if sent one after the other. A key
// that is not a bucket (another type: a key clash) fails its own group only (-1 replies,
// nothing written), not the other requests of the batch: pcall, since an error would abort
// the script after earlier groups had written.
export const BATCH_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local o = 0
local k = 0
local a = 2
for g = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local base = {}
  local admitted = true
  local broken = false
  for i = 1, n do
    local v = redis.pcall('GET', KEYS[k + i])
    if type(v) == 'table' and v.err then broken = true end
    local tat = tonumber(v)
    if tat == nil or tat < now then tat = now end
    base[i] = tat
    if tat + tonumber(ARGV[a + 2 * i - 2]) - now > tonumber(ARGV[a + 2 * i - 1]) then admitted = false end
  end
  if broken then
    for i = 1, n do
      out[o + 1] = -1
      out[o + 2] = 0
      out[o + 3] = 0
      out[o + 4] = 0
      o = o + 4
    end
  else
  for i = 1, n do
    local T = tonumber(ARGV[a + 2 * i - 2])
    local tau = tonumber(ARGV[a + 2 * i - 1])
    local newTat = base[i] + T
    local allowed = newTat - now <= tau
    local tat = base[i]
    if admitted then
      tat = newTat
      redis.call('SET', KEYS[k + i], string.format('%d', newTat), 'PX', math.ceil((newTat - now) / 1000))
    end
    local remaining = math.floor((tau - (tat - now)) / T)
    if remaining < 0 then remaining = 0 end
    out[o + 1] = allowed and 1 or 0
    out[o + 2] = remaining
    out[o + 3] = tat - now
    out[o + 4] = allowed and 0 or (newTat - now - tau)
    o = o + 4
  end
  end
  k = k + n
  a = a + 2 * n
end
return out
`;

const BATCH_COMMAND = 'ztgwGcraBatch';
/** Groups per batch call: bounds how long one script holds Redis (a few µs per key). */
const MAX_BATCH_GROUPS = 256;

// One command per number of keys in a group, defined on first use (groups hold a few
// tiers, so a few commands). Why not one command taking the key count as its first
// argument: ioredis's auto-pipelining routes a custom command on a Cluster by its first
// argument, which would then be the count, not a key. Each command is its own EVAL-once
// on a connection, all with the same SHA.
const COMMAND = 'ztgwGcra';
type GcraCommand = (...args: (string | number)[]) => Promise<number[]>;

/**
 * Client options for the rate-limit connection (spread into `new Redis(url, {...})`, or a
 * Cluster's top level and redisOptions). Why each:
 * - enableOfflineQueue false: while disconnected a command fails at once instead of
 *   waiting in a queue (the failure mode then answers within microseconds, not timeoutMs).
 * - maxRetriesPerRequest 0, autoResendUnfulfilledCommands false: a check cut by a
 *   disconnect is never replayed later, when its request has long been answered.
 * - enableAutoPipelining off: the store already sends one call per event-loop turn (the
 *   batch); ioredis's own per-tick queue only added work (in process, 50 checks in flight:
 *   9-10 µs of CPU per check without it, 12-15 with it). A Cluster client turns it on: there
 *   each group is its own call, and it batches those per node.
 * - retryStrategy: reconnect within half a second of Redis coming back (ioredis' default
 *   backs off to 5 s).
 */
export const rateLimitRedisOptions = Object.freeze({
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  enableAutoPipelining: false,
  retryStrategy: (times: number) => Math.min(50 * times, 500),
} satisfies RedisOptions);

export interface RedisStoreOptions {
  /** Owned by the caller, who also closes it. */
  redis: Redis | Cluster;
}

export function createRedisStore(opts: RedisStoreOptions): RateLimitStore {
  const { redis } = opts;
  const isCluster = (redis as { isCluster?: boolean }).isCluster === true;
  const defined = new Set<number>();

  /** The command's name for a group of n keys, defined on the client the first time. */
  function commandFor(n: number): string {
    const name = `${COMMAND}${n}`;
    if (!defined.has(n)) {
      // Another store on the same client defines the same script: harmless.
      redis.defineCommand(name, { numberOfKeys: n, lua: GCRA_LUA });
      defined.add(n);
    }
    return name;
  }

  function argsOf(group: Group): (string | number)[] {
    const args: (string | number)[] = [...group.keys];
    for (const tier of group.tiers) args.push(tier.intervalUs, tier.toleranceUs);
    return args;
  }

  // Checks waiting for this turn's batch call.
  let queued: { groups: Group[]; resolve(replies: (number[] | Error)[]): void }[] = [];
  let flushScheduled = false;

  function flush(): void {
    flushScheduled = false;
    const batch = queued;
    queued = [];
    for (let from = 0; from < batch.length; ) {
      let groups = 0;
      let to = from;
      while (to < batch.length && (to === from || groups + batch[to]!.groups.length <= MAX_BATCH_GROUPS)) groups += batch[to++]!.groups.length;
      send(batch.slice(from, to), groups);
      from = to;
    }
  }

  function send(checks: typeof queued, groupCount: number): void {
    const keys: string[] = [];
    const args: (string | number)[] = [groupCount];
    for (const { groups } of checks) {
      for (const g of groups) {
        for (const key of g.keys) keys.push(key);
        args.push(g.keys.length);
        for (const tier of g.tiers) args.push(tier.intervalUs, tier.toleranceUs);
      }
    }
    const call = (redis as unknown as Record<string, GcraCommand>)[BATCH_COMMAND]!(keys.length, ...keys, ...args);
    call.then(
      (reply) => {
        let at = 0;
        for (const { groups, resolve } of checks) {
          resolve(
            groups.map((g) => {
              const part = Array.isArray(reply) ? reply.slice(at, at + 4 * g.keys.length) : reply;
              at += 4 * g.keys.length;
              return part as number[];
            }),
          );
        }
      },
      (err: unknown) => {
        const error = err instanceof Error ? err : new Error(String(err));
        for (const { groups, resolve } of checks) resolve(groups.map(() => error));
      },
    );
  }

  /** Joins this turn's batch; resolves with one reply (or error) per group. */
  function viaBatch(groups: Group[]): Promise<(number[] | Error)[]> {
    if (!batchDefined) {
      redis.defineCommand(BATCH_COMMAND, { lua: BATCH_LUA });
      batchDefined = true;
    }
    return new Promise((resolve) => {
      queued.push({ groups, resolve });
      if (!flushScheduled) {
        flushScheduled = true;
        // After the poll phase: every request that arrived in this turn has queued its check.
        setImmediate(flush);
      }
    });
  }
  let batchDefined = false;

  function viaCalls(groups: Group[]): Promise<(number[] | Error)[]> {
    const r = redis as unknown as Record<string, GcraCommand>;
    return Promise.all(
      groups.map((g) =>
        r[commandFor(g.keys.length)]!(...argsOf(g)).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))),
      ),
    );
  }

  return {
    async check(items) {
      const groups = groupItems(items);
      const out: (LimitOutcome | undefined)[] = new Array(items.length);
      if (groups.length === 0) return [];
      let replies: (number[] | Error)[];
      try {
        replies = isCluster ? await viaCalls(groups) : await viaBatch(groups);
      } catch (err) {
        throw new RateLimitStoreError('error', `rate limit: redis failed: ${(err as Error).message}`, { cause: err });
      }
      let failure: Error | undefined;
      groups.forEach((group, g) => {
        const reply = replies[g];
        if (reply instanceof Error || !Array.isArray(reply) || reply.length !== 4 * group.keys.length || reply[0] === -1) {
          failure ??=
            reply instanceof Error
              ? reply
              : new Error(Array.isArray(reply) && reply[0] === -1 ? 'a key of the group holds something other than a rate-limit bucket' : `unexpected reply ${JSON.stringify(reply)}`);
          return;
        }
        const results = group.keys.map((_, k) => ({
          allowed: reply[4 * k] === 1,
          remaining: Number(reply[4 * k + 1]),
          resetUs: Number(reply[4 * k + 2]),
          retryAfterUs: Number(reply[4 * k + 3]),
        }));
        fillOutcomes(out, group, results);
      });
      if (failure) {
        throw new RateLimitStoreError('error', `rate limit: redis failed: ${failure.message}`, { cause: failure, partial: out });
      }
      return out as LimitOutcome[];
    },
    async close() {
      // The client is the caller's.
    },
  };
}
