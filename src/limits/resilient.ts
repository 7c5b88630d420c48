// A stalled or dead Redis must never stall requests. This wraps the shared store with a
// deadline and each tier's declared failure mode (Envoy's ratelimit filter has the same
// choice as failure_mode_deny):
//   allow → the request passes (outcome allowed, degraded 'allow');
//   deny  → refused (degraded 'deny'; the caller answers 503: the service is unavailable,
//           the client did nothing wrong, so not 429);
//   local → an in-process limiter at the tier's limit (and burst) divided by the expected
//           number of gateway instances, at least 1 per period (degraded 'local').
//
// State: 'ok' until a call fails or misses its deadline, then 'failing' until a call
// succeeds; each change is reported once (onStateChange), each degraded outcome counted
// (onFallback). While failing, one call at a time still goes to Redis as a probe and the
// others take the fallback at once: a stalled Redis then costs one pending command, not
// one per request, and the first probe answered after ioredis reconnects flips the state
// back. A check that missed its deadline may still be applied by Redis later (a stalled
// server wakes up): its request was answered by the failure mode, and the charge only
// makes the next requests of that key slightly stricter.
import { createTier, type Tier } from './gcra.ts';
import { createMemoryStore } from './memory-store.ts';
import { RateLimitStoreError, type LimitItem, type LimitOutcome, type RateLimitStore } from './store.ts';

export type StoreState = 'ok' | 'failing';

export interface ResilientStoreOptions {
  /** The shared store (Redis). Closed by close(). */
  primary: RateLimitStore;
  /**
   * Deadline per check, ms; default 50. A healthy check is well under a millisecond; past
   * this the failure modes answer. Give the client rateLimitRedisOptions too (no offline
   * queue), so a disconnected Redis fails at once instead of at the deadline.
   */
  timeoutMs?: number;
  /** Gateway instances sharing the Redis, dividing each tier's rate in 'local' mode; default 1. */
  expectedInstances?: number;
  /** Keys of the 'local' fallback store; default 100 000. */
  localMaxEntries?: number;
  /** Clock of the local fallback (ms), for tests. */
  now?: () => number;
  /** Once per change of state; `error` is what made it fail (a RateLimitStoreError). */
  onStateChange?: (state: StoreState, error?: RateLimitStoreError) => void;
  /** Once per degraded outcome: which mode answered, for which tier. */
  onFallback?: (mode: 'allow' | 'deny' | 'local', tier: string) => void;
}

export interface ResilientStore extends RateLimitStore {
  /** For /readyz: 'failing' while the shared store does not answer. */
  state(): StoreState;
}

export function createResilientStore(opts: ResilientStoreOptions): ResilientStore {
  const { primary, onStateChange, onFallback } = opts;
  const timeoutMs = opts.timeoutMs ?? 50;
  const instances = opts.expectedInstances ?? 1;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`rate limit timeoutMs must be positive, got ${timeoutMs}`);
  if (!Number.isSafeInteger(instances) || instances < 1) throw new RangeError(`rate limit expectedInstances must be an integer >= 1, got ${instances}`);

  const local = createMemoryStore({ maxEntries: opts.localMaxEntries ?? 100_000, ...(opts.now && { now: opts.now }) });
  // The local share of each tier, made once per tier object (tiers are compiled once per config).
  const shares = new WeakMap<Tier, Tier>();
  function shareOf(tier: Tier): Tier {
    let share = shares.get(tier);
    if (share === undefined) {
      share =
        instances === 1
          ? tier
          : createTier({
              name: tier.name,
              limit: Math.max(1, Math.floor(tier.limit / instances)),
              periodMs: tier.periodMs,
              burst: Math.max(1, Math.floor(tier.burst / instances)),
              onStoreFailure: tier.onStoreFailure,
            });
      shares.set(tier, share);
    }
    return share;
  }

  let state: StoreState = 'ok';
  let probing = false;

  function setState(next: StoreState, error?: RateLimitStoreError): void {
    if (next === state) return;
    state = next;
    onStateChange?.(next, error);
  }

  function withDeadline(items: readonly LimitItem[]): Promise<LimitOutcome[]> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RateLimitStoreError('timeout', `rate limit: no answer from the store within ${timeoutMs} ms`)), timeoutMs);
    });
    // race() keeps a handler on the primary's promise, so a late rejection is not unhandled.
    return Promise.race([primary.check(items), deadline]).finally(() => clearTimeout(timer));
  }

  async function fallback(items: readonly LimitItem[], partial: readonly (LimitOutcome | undefined)[] | undefined): Promise<LimitOutcome[]> {
    const out: LimitOutcome[] = new Array(items.length);
    const localItems: LimitItem[] = [];
    const localAt: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const done = partial?.[i];
      if (done !== undefined) {
        out[i] = done;
        continue;
      }
      const { key, tier } = items[i]!;
      switch (tier.onStoreFailure) {
        case 'allow':
          out[i] = { key, tier, allowed: true, remaining: tier.burst, resetMs: 0, retryAfterMs: 0, degraded: 'allow' };
          onFallback?.('allow', tier.name);
          break;
        case 'deny':
          out[i] = { key, tier, allowed: false, remaining: 0, resetMs: 0, retryAfterMs: 0, degraded: 'deny' };
          onFallback?.('deny', tier.name);
          break;
        default:
          localItems.push({ key, tier: shareOf(tier) });
          localAt.push(i);
      }
    }
    if (localItems.length > 0) {
      const answers = await local.check(localItems);
      answers.forEach((a, j) => {
        const i = localAt[j]!;
        // Reported against the configured tier (headers show the policy), with the local figures.
        out[i] = { ...a, tier: items[i]!.tier, degraded: 'local' };
        onFallback?.('local', items[i]!.tier.name);
      });
    }
    return out;
  }

  return {
    state: () => state,
    async check(items) {
      if (items.length === 0) return [];
      if (state === 'failing' && probing) return fallback(items, undefined);
      const probe = state === 'failing';
      if (probe) probing = true;
      try {
        const outcomes = await withDeadline(items);
        setState('ok');
        return outcomes;
      } catch (err) {
        const error =
          err instanceof RateLimitStoreError ? err : new RateLimitStoreError('error', `rate limit: store failed: ${(err as Error).message}`, { cause: err });
        setState('failing', error);
        return fallback(items, error.partial);
      } finally {
        if (probe) probing = false;
      }
    },
    async close() {
      await local.close();
      await primary.close();
    },
  };
}
