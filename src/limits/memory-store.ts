// The in-process rate-limit store: the embedded default (no Redis configured) and the
// 'local' failure mode's fallback. Same algorithm and grouping as the Redis store
// (gcra.ts, store.ts); JavaScript runs a check to completion, so a group is atomic here
// without a lock.
import { LRUCache } from 'lru-cache';
import { checkGroup } from './gcra.ts';
import { fillOutcomes, groupItems, type LimitOutcome, type RateLimitStore } from './store.ts';

export interface MemoryStoreOptions {
  /**
   * Keys held at most (default 100 000; ~150 bytes each). The least recently used key goes
   * first; a key whose tat has passed is the same as no key, so evicting idle keys changes
   * nothing. Evicting a live one forgets what it was charged: size this above the number of
   * keys active within one period (onEvictLive counts those).
   */
  maxEntries?: number;
  /** Milliseconds; default performance.timeOrigin + performance.now() (monotonic). */
  now?: () => number;
  /** Called when a key still being limited is evicted for room (a metric: the store is too small). */
  onEvictLive?: () => void;
}

export interface MemoryRateLimitStore extends RateLimitStore {
  /** Keys held, live or idle. */
  readonly size: number;
}

export function createMemoryStore(opts: MemoryStoreOptions = {}): MemoryRateLimitStore {
  const max = opts.maxEntries ?? 100_000;
  if (!Number.isSafeInteger(max) || max <= 0) throw new RangeError(`rate-limit memory store maxEntries must be a positive integer, got ${max}`);
  const origin = performance.timeOrigin;
  const now = opts.now ?? (() => origin + performance.now());
  const nowUs = (): number => Math.floor(now() * 1000);
  const onEvictLive = opts.onEvictLive;

  // key -> tat in microseconds of `now`'s clock.
  const tats = new LRUCache<string, number>({
    max,
    ...(onEvictLive && {
      dispose: (tat: number, _key: string, reason: LRUCache.DisposeReason) => {
        if (reason === 'evict' && tat > nowUs()) onEvictLive();
      },
    }),
  });

  return {
    get size() {
      return tats.size;
    },
    async check(items) {
      const out: (LimitOutcome | undefined)[] = new Array(items.length);
      const t = nowUs();
      for (const group of groupItems(items)) {
        const { admitted, results, newTats } = checkGroup(group.tiers, group.keys.map((k) => tats.get(k)), t);
        if (admitted) for (let k = 0; k < group.keys.length; k++) tats.set(group.keys[k]!, newTats[k]!);
        fillOutcomes(out, group, results);
      }
      return out as LimitOutcome[];
    },
    async close() {
      tats.clear();
    },
  };
}
