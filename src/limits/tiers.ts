// Rate-limit tiers as the limit stage uses them: each configured tier (limits.tiers) compiled
// once into its GCRA figures (gcra.ts) and its key layout (keys.ts).
import { createTier, type StoreFailureMode, type Tier } from './store.ts';
import { createKeyBuilder, type Dimension, type KeyBuilder } from './keys.ts';

/** A tier as the config writes it: "100 per 1m, burst 20", keyed by subject. */
export interface TierSpec {
  readonly limit: number;
  /** "10s", "1m", "1h". */
  readonly per: string;
  readonly burst?: number;
  readonly key: readonly string[];
  readonly onStoreFailure: StoreFailureMode;
}

export interface CompiledTier {
  readonly tier: Tier;
  readonly key: KeyBuilder;
  /** Claim names the key reads (claim:<name> dimensions). */
  readonly claims: readonly string[];
  /** The key reads only the subject and claims: the same for every request of one verified token. */
  readonly identityOnly: boolean;
}

const UNIT_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000 };

/** "10s", "1m", "1h" (the config schema's pattern) → milliseconds. */
export function periodMs(period: string): number {
  const ms = UNIT_MS[period.slice(-1)];
  const n = Number(period.slice(0, -1));
  if (ms === undefined || !Number.isSafeInteger(n) || n <= 0) throw new RangeError(`rate-limit period must look like 10s, 1m or 1h, got ${JSON.stringify(period)}`);
  return n * ms;
}

export function compileTiers(limits: { readonly keyPrefix: string; readonly tiers: Readonly<Record<string, TierSpec>> }): ReadonlyMap<string, CompiledTier> {
  const out = new Map<string, CompiledTier>();
  for (const [name, t] of Object.entries(limits.tiers)) {
    const keyBy = t.key as Dimension[];
    out.set(
      name,
      Object.freeze({
        tier: createTier({ name, limit: t.limit, periodMs: periodMs(t.per), burst: t.burst, onStoreFailure: t.onStoreFailure }),
        key: createKeyBuilder({ prefix: limits.keyPrefix, tier: name, keyBy }),
        claims: Object.freeze(keyBy.filter((d) => d.startsWith('claim:')).map((d) => d.slice('claim:'.length))),
        identityOnly: keyBy.every((d) => d === 'subject' || d.startsWith('claim:')),
      }),
    );
  }
  return out;
}
