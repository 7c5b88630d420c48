// The rate-limit store interface: one method that checks several tiers of one request at
// once. Memory (memory-store.ts, the embedded default) and Redis (redis-store.ts) implement
// it and pass one contract suite (store.contract.ts); resilient.ts wraps a Redis store
// with a deadline and the tiers' failure modes.
//
// Grouping. Items whose keys carry the same Redis Cluster hash tag (keys.ts puts the first
// dimension's value there) form a group, checked atomically: if any item of the group is
// refused, no key of the group is charged. Groups are checked independently (in Redis,
// each is one script call on its own slot), so a request refused by one group is still
// charged in the others, as Envoy's ratelimit service does with its descriptors. Key
// tiers that must be all-or-nothing by the same first dimension (e.g. subject).
import type { GcraResult, StoreFailureMode, Tier } from './gcra.ts';

export type { StoreFailureMode, Tier, TierParams } from './gcra.ts';
export { createTier } from './gcra.ts';

export interface LimitItem {
  /** From keys.ts; includes the tier's name, so a key belongs to one tier. */
  key: string;
  tier: Tier;
}

export interface LimitOutcome {
  key: string;
  tier: Tier;
  /**
   * This tier admits the request. The request passes only if every outcome is allowed
   * (isAdmitted); within a group an allowed outcome of a refused request was not charged.
   */
  allowed: boolean;
  /** Requests that would pass right after this one. */
  remaining: number;
  /** Milliseconds until the bucket is full again (rounded up). */
  resetMs: number;
  /** Refused only: milliseconds until this request would pass (rounded up); 0 when allowed. */
  retryAfterMs: number;
  /**
   * Set when the shared store could not answer and the tier's failure mode decided:
   * 'allow' (let through, figures unknown), 'deny' (refused; answer 503, not 429),
   * 'local' (this instance's in-memory share decided; the figures are its own).
   */
  degraded?: StoreFailureMode;
}

export interface RateLimitStore {
  /**
   * One outcome per item, in order. Items with the same key are checked (and charged)
   * once and share the outcome. Rejects with RateLimitStoreError when the store cannot
   * answer; never resolves "allowed" for a check it did not make.
   */
  check(items: readonly LimitItem[]): Promise<LimitOutcome[]>;
  /** Releases what the store owns (never a Redis client it was given). */
  close(): Promise<void>;
}

export type RateLimitStoreFailure = 'timeout' | 'error';

/**
 * The store could not answer. `partial` holds the outcomes of the groups that were
 * checked (and charged) before the failure, by item index; resilient.ts uses them and
 * applies the failure mode to the rest only.
 */
export class RateLimitStoreError extends Error {
  static readonly code = 'ERR_RATE_LIMIT_STORE';
  readonly code = RateLimitStoreError.code;
  readonly reason: RateLimitStoreFailure;
  readonly partial: readonly (LimitOutcome | undefined)[] | undefined;

  constructor(reason: RateLimitStoreFailure, message: string, options?: { cause?: unknown; partial?: readonly (LimitOutcome | undefined)[] }) {
    super(message, options);
    this.name = 'RateLimitStoreError';
    this.reason = reason;
    this.partial = options?.partial;
  }
}

/** True when every tier admits the request. */
export function isAdmitted(outcomes: readonly LimitOutcome[]): boolean {
  for (const o of outcomes) if (!o.allowed) return false;
  return true;
}

/**
 * The Redis Cluster hash tag of a key, as Redis computes it: the text between the first
 * '{' and the next '}', if non-empty; otherwise the whole key.
 */
export function hashTagOf(key: string): string {
  const open = key.indexOf('{');
  if (open === -1) return key;
  const close = key.indexOf('}', open + 1);
  if (close === -1 || close === open + 1) return key;
  return key.slice(open + 1, close);
}

export interface Group {
  /** Distinct keys of the group, each with its tier. */
  readonly keys: string[];
  readonly tiers: Tier[];
  /** For each distinct key (same index), the item indexes that share it. */
  readonly items: number[][];
}

/** Splits a check into its groups (same hash tag), merging items with the same key. */
export function groupItems(items: readonly LimitItem[]): Group[] {
  const byTag = new Map<string, Group>();
  const byKey = new Map<string, { group: Group; index: number }>();
  for (let i = 0; i < items.length; i++) {
    const { key, tier } = items[i]!;
    const seen = byKey.get(key);
    if (seen !== undefined) {
      seen.group.items[seen.index]!.push(i);
      continue;
    }
    const tag = hashTagOf(key);
    let group = byTag.get(tag);
    if (group === undefined) {
      group = { keys: [], tiers: [], items: [] };
      byTag.set(tag, group);
    }
    byKey.set(key, { group, index: group.keys.length });
    group.keys.push(key);
    group.tiers.push(tier);
    group.items.push([i]);
  }
  return [...byTag.values()];
}

/** Places one group's results (microseconds) into `out` as outcomes (milliseconds). */
export function fillOutcomes(
  out: (LimitOutcome | undefined)[],
  group: Group,
  results: readonly GcraResult[],
): void {
  for (let k = 0; k < group.keys.length; k++) {
    const r = results[k]!;
    const outcome: LimitOutcome = {
      key: group.keys[k]!,
      tier: group.tiers[k]!,
      allowed: r.allowed,
      remaining: r.remaining,
      resetMs: Math.ceil(r.resetUs / 1000),
      retryAfterMs: Math.ceil(r.retryAfterUs / 1000),
    };
    for (const i of group.items[k]!) out[i] = outcome;
  }
}
