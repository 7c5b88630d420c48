// The shared rate-limit store: GCRA in one Lua script per group of keys, so every gateway
// instance sees the same counts and a check is exact under any concurrency (Redis runs a
// script alone). The script is gcra.ts's checkGroup line for line.
//
// - Loaded once: ioredis defineCommand sends EVAL the first time on each connection and
//   EVALSHA after, resending on NOSCRIPT (a restarted or flushed Redis), as
//   @fastify/rate-limit's RedisStore does.
// - One round trip: on a single Redis the groups of a check go out in one pipeline; on a
//   Cluster ioredis requires one pipeline per node, so each group is its own call, all
//   issued at once (with enableAutoPipelining ioredis batches them per node).
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
 * - enableAutoPipelining: concurrent checks share one write per tick, fewer syscalls when
 *   Redis is across a network. Measured on one 2-core box with Redis beside the gateway
 *   (64 concurrent checks) it was no faster: 31-39k checks/s against 33-52k without; let
 *   the gateway benchmark decide.
 * - retryStrategy: reconnect within half a second of Redis coming back (ioredis' default
 *   backs off to 5 s).
 */
export const rateLimitRedisOptions = Object.freeze({
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  enableAutoPipelining: true,
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

  async function viaPipeline(groups: Group[]): Promise<(number[] | Error)[]> {
    const names = groups.map((g) => commandFor(g.keys.length));
    // Created after the commands exist: a pipeline copies the client's scripts when made.
    const pipeline = redis.pipeline() as unknown as Record<string, GcraCommand> & { exec(): Promise<[Error | null, unknown][] | null> };
    groups.forEach((g, i) => void pipeline[names[i]!]!(...argsOf(g)));
    const replies = await pipeline.exec();
    if (replies === null) throw new Error('pipeline was discarded');
    return replies.map(([err, reply]) => err ?? (reply as number[]));
  }

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
        replies = groups.length === 1 || isCluster ? await viaCalls(groups) : await viaPipeline(groups);
      } catch (err) {
        throw new RateLimitStoreError('error', `rate limit: redis failed: ${(err as Error).message}`, { cause: err });
      }
      let failure: Error | undefined;
      groups.forEach((group, g) => {
        const reply = replies[g];
        if (reply instanceof Error || !Array.isArray(reply) || reply.length !== 4 * group.keys.length) {
          failure ??= reply instanceof Error ? reply : new Error(`unexpected reply ${JSON.stringify(reply)}`);
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
