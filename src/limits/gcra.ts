// GCRA (the generic cell rate algorithm, ITU-T I.371; the "virtual scheduling" form) over
// one theoretical arrival time (tat) per key. This file is the algorithm in TypeScript for
// the memory store; redis-store.ts holds the same steps in Lua, and the contract suite runs
// both. A tier of `limit` per `periodMs` with capacity `burst` has emission interval
// T = periodMs / limit and tolerance tau = burst * T: from idle `burst` requests pass at
// once, then one per T. Per check of a key (cost 1):
//   tat = max(stored_tat, now); new_tat = tat + T; allowed iff new_tat - now <= tau.
// Only an admitted request stores new_tat (expiring at new_tat), so a flood of refused
// requests costs nothing and cannot push the key's recovery further out.
//
// Units: integer microseconds throughout, T rounded UP to a whole microsecond. Why not a
// rational T: Redis's Lua numbers are doubles, and now in microseconds (~1.8e15) already
// uses most of the 2^53 exact range, so scaling time by `limit` to make T an integer would
// overflow it; and a fractional T stored back as text loses digits (Lua 5.1 prints 14
// significant ones). Rounded up, T errs by under 1 µs per request and never in the
// client's favour; the burst count stays exact (n * T <= burst * T iff n <= burst), and T is
// exact whenever periodMs * 1000 is a multiple of limit (100 per 1 min: T = 600 000 µs).

/** What a tier does when its shared store (Redis) cannot answer; see resilient.ts. */
export type StoreFailureMode = 'allow' | 'deny' | 'local';

export interface TierParams {
  /** Shown in the RateLimit headers and the key; config names it. */
  name: string;
  /** Requests per period, sustained. */
  limit: number;
  periodMs: number;
  /** Requests that may pass at once from idle; default `limit`. */
  burst?: number;
  /** Default 'local': keeps limiting (at this instance's share) without failing anyone closed. */
  onStoreFailure?: StoreFailureMode;
}

/** A validated tier with its derived GCRA figures; build with createTier, once per config. */
export interface Tier {
  readonly name: string;
  readonly limit: number;
  readonly periodMs: number;
  readonly burst: number;
  readonly onStoreFailure: StoreFailureMode;
  /** Emission interval T in whole microseconds (rounded up). */
  readonly intervalUs: number;
  /** burst * T in microseconds: how far ahead of now the tat may run. */
  readonly toleranceUs: number;
}

// now (µs since 1970, ~1.8e15) plus the tolerance must stay below 2^53 (~9e15) in Lua's
// doubles; 1e15 µs is 31 years of tolerance.
const MAX_TOLERANCE_US = 1e15;
const MODES: ReadonlySet<string> = new Set(['allow', 'deny', 'local']);

export function createTier(params: TierParams): Tier {
  const { name, limit, periodMs } = params;
  const burst = params.burst ?? limit;
  const onStoreFailure = params.onStoreFailure ?? 'local';
  if (typeof name !== 'string' || name.length === 0) throw new RangeError('rate-limit tier name must be a non-empty string');
  if (!Number.isSafeInteger(limit) || limit <= 0) throw new RangeError(`tier ${name}: limit must be a positive integer, got ${limit}`);
  if (!Number.isSafeInteger(periodMs) || periodMs <= 0) throw new RangeError(`tier ${name}: periodMs must be a positive integer, got ${periodMs}`);
  if (!Number.isSafeInteger(burst) || burst <= 0) throw new RangeError(`tier ${name}: burst must be a positive integer, got ${burst}`);
  if (!MODES.has(onStoreFailure)) throw new RangeError(`tier ${name}: onStoreFailure must be allow, deny or local, got ${String(onStoreFailure)}`);
  const intervalUs = Math.ceil((periodMs * 1000) / limit);
  const toleranceUs = burst * intervalUs;
  if (toleranceUs > MAX_TOLERANCE_US) throw new RangeError(`tier ${name}: burst * period / limit is too long (over 31 years)`);
  return Object.freeze({ name, limit, periodMs, burst, onStoreFailure, intervalUs, toleranceUs });
}

/** One key's verdict, in microseconds; the stores turn it into a LimitOutcome. */
export interface GcraResult {
  /** This key would admit the request (its group may still refuse it: see checkGroup). */
  allowed: boolean;
  /** Requests that would pass right after this one. */
  remaining: number;
  /** Until the bucket is full again (idle). */
  resetUs: number;
  /** Denied only: until this request would pass; 0 when allowed. */
  retryAfterUs: number;
}

/**
 * Checks one group of keys as a unit: if any key refuses, none is written (the request
 * is refused as a whole, and tiers that would have let it pass are not charged for it).
 * `tats[i]` is key i's stored tat (undefined or <= now: idle). Returns each key's result
 * and, when admitted, the tats to store. The Lua script in redis-store.ts is this function.
 */
export function checkGroup(
  tiers: readonly Tier[],
  tats: readonly (number | undefined)[],
  nowUs: number,
): { admitted: boolean; results: GcraResult[]; newTats: number[] } {
  const base: number[] = [];
  let admitted = true;
  for (let i = 0; i < tiers.length; i++) {
    const stored = tats[i];
    const tat = stored === undefined || stored < nowUs ? nowUs : stored;
    base.push(tat);
    if (tat + tiers[i]!.intervalUs - nowUs > tiers[i]!.toleranceUs) admitted = false;
  }
  const results: GcraResult[] = [];
  const newTats: number[] = [];
  for (let i = 0; i < tiers.length; i++) {
    const { intervalUs: T, toleranceUs: tau } = tiers[i]!;
    const newTat = base[i]! + T;
    const allowed = newTat - nowUs <= tau;
    // Figures after this request if it is charged, else from the unchanged tat.
    const tat = admitted ? newTat : base[i]!;
    newTats.push(newTat);
    results.push({
      allowed,
      // Clamped: a tat stored under a larger tolerance (a tier shrunk by a reload) can
      // lie further ahead than this tier allows.
      remaining: Math.max(0, Math.floor((tau - (tat - nowUs)) / T)),
      resetUs: tat - nowUs,
      retryAfterUs: allowed ? 0 : newTat - nowUs - tau,
    });
  }
  return { admitted, results, newTats };
}
