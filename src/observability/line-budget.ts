// A per-key budget for log lines: a token bucket per key (a principal), so that one client
// looping on a denied route cannot flood the decision log, while every other principal's
// denies are still written. Lines over budget are counted, and the next line written for
// that key says how many were suppressed, so nothing disappears silently. Hand-written
// because it is a dozen lines over lru-cache (which bounds the keys kept).
import { LRUCache } from 'lru-cache';

export interface LineBudgetOptions {
  /** Lines per second each key earns. */
  readonly perSecond: number;
  /** Lines a key may write at once after being quiet. */
  readonly burst: number;
  /** Keys remembered; the least recently seen is forgotten (and starts with a full burst). */
  readonly maxKeys: number;
  /** Milliseconds (monotonic is fine). */
  readonly now?: () => number;
}

export interface LineBudget {
  /** undefined: over budget, do not write. A number: write, and report this many suppressed since the last line. */
  take(key: string): number | undefined;
}

interface Bucket {
  tokens: number;
  at: number;
  suppressed: number;
}

export function createLineBudget(opts: LineBudgetOptions): LineBudget {
  const now = opts.now ?? (() => performance.now());
  const buckets = new LRUCache<string, Bucket>({ max: opts.maxKeys });
  const perMs = opts.perSecond / 1000;
  return {
    take(key) {
      const t = now();
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        bucket = { tokens: opts.burst, at: t, suppressed: 0 };
        buckets.set(key, bucket);
      } else {
        bucket.tokens = Math.min(opts.burst, bucket.tokens + (t - bucket.at) * perMs);
        bucket.at = t;
      }
      if (bucket.tokens < 1) {
        bucket.suppressed++;
        return undefined;
      }
      bucket.tokens -= 1;
      const suppressed = bucket.suppressed;
      bucket.suppressed = 0;
      return suppressed;
    },
  };
}
