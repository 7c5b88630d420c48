// Stage 7: rate limits. The route's tiers and a policy's rateLimitTier obligation are checked
// together in one store call (one Redis round trip); a refused request ends here, so the
// upstream is never contacted for it. Every checked response carries the IETF RateLimit
// fields (draft-ietf-httpapi-ratelimit-headers), set on ctx.rateLimit for the proxy.
import type { CompiledTier } from '../limits/tiers.ts';
import { RateLimitedError, RateLimitUnavailableError } from '../core/errors.ts';
import { rateLimitHeaders } from '../limits/headers.ts';
import { isAdmitted, type LimitItem, type LimitOutcome, type RateLimitStore } from '../limits/store.ts';
import type { KeyValues } from '../limits/keys.ts';
import type { RequestContext, Stage } from './context.ts';

export type LimitResult = 'allowed' | 'limited' | 'degraded_allow' | 'degraded_deny' | 'local';

export interface LimitStageDeps {
  readonly store: RateLimitStore;
  /** Every tier by name: what an obligation may name (the policy loader checked it exists). */
  readonly tiers: ReadonlyMap<string, CompiledTier>;
  /** Once per tier checked (metrics). */
  readonly onOutcome?: (tier: string, result: LimitResult) => void;
}

/**
 * A value the request does not have (no device on an unbound token, a claim the token lacks)
 * is one shared bucket, never "no limit": a client cannot escape a tier by leaving a value
 * out. (Public routes have no subject, device or claims: semantics.ts refuses tiers keyed by
 * them there.) Keys hash every value, so this marker cannot collide with a real one's key
 * unless that value is this very string.
 */
const ABSENT = '\u0000absent';

function claimValue(value: unknown): string {
  if (value === undefined || value === null) return ABSENT;
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function keyValues(ctx: RequestContext, tiers: readonly CompiledTier[]): KeyValues {
  let claims: Record<string, string> | undefined;
  for (const t of tiers) {
    for (const name of t.claims) {
      claims ??= {};
      const source = ctx.identity?.claims;
      claims[name] = claimValue(source !== undefined && Object.hasOwn(source, name) ? source[name] : undefined);
    }
  }
  return {
    subject: ctx.identity?.subject ?? ABSENT,
    device: ctx.device?.id ?? ABSENT,
    route: ctx.route!.name,
    ip: ctx.clientIp,
    claims,
  };
}

function resultOf(o: LimitOutcome): LimitResult {
  if (o.degraded === 'allow') return 'degraded_allow';
  if (o.degraded === 'deny') return 'degraded_deny';
  if (o.degraded === 'local') return 'local';
  return o.allowed ? 'allowed' : 'limited';
}

export function createLimitStage(deps: LimitStageDeps): Stage {
  const { store, tiers, onOutcome } = deps;
  // A key read only from the token (subject, claims) is built once per verified identity: the
  // token cache hands every request of a token the same identity object, and building a key
  // hashes each value (SHA-256). Weak: the entry goes with the identity.
  const identityKeys = new WeakMap<object, Map<CompiledTier, string>>();

  function keyOf(ctx: RequestContext, tier: CompiledTier, values: () => KeyValues): string {
    const identity = ctx.identity;
    if (!tier.identityOnly || identity === undefined) return tier.key(values())!;
    let keys = identityKeys.get(identity);
    if (keys === undefined) identityKeys.set(identity, (keys = new Map()));
    let key = keys.get(tier);
    if (key === undefined) keys.set(tier, (key = tier.key(values())!));
    return key;
  }

  function settle(ctx: RequestContext, outcomes: readonly LimitOutcome[]): void {
    if (onOutcome !== undefined) for (const o of outcomes) onOutcome(o.tier.name, resultOf(o));
    const headers = rateLimitHeaders(outcomes);
    if (isAdmitted(outcomes)) {
      ctx.rateLimit = headers;
      return;
    }
    const fields: Record<string, string> = { 'ratelimit-policy': headers.policy };
    if (headers.rateLimit !== '') fields.ratelimit = headers.rateLimit;
    // Refused on its figures by any tier: 429. Refused only because the store failed and a
    // tier fails closed: 503 (the client did nothing wrong; the problem says retry shortly).
    if (headers.retryAfter === undefined) throw new RateLimitUnavailableError('rate-limit store unavailable (onStoreFailure: deny)', { headers: fields });
    fields['retry-after'] = String(headers.retryAfter);
    throw new RateLimitedError(`rate limited by ${outcomes.filter((o) => !o.allowed).map((o) => o.tier.name).join(', ')}`, { headers: fields });
  }

  return (ctx: RequestContext) => {
    const route = ctx.route!;
    if (!route.rateLimiting) return;
    const named = ctx.decision?.obligations.rateLimitTier;
    const obligation = named === undefined ? undefined : tiers.get(named);
    const applied = obligation === undefined ? route.limits : [...route.limits, obligation];
    if (applied.length === 0) return;
    let values: KeyValues | undefined;
    const lazyValues = (): KeyValues => (values ??= keyValues(ctx, applied));
    const items: LimitItem[] = applied.map((t) => ({ key: keyOf(ctx, t, lazyValues), tier: t.tier }));
    return store.check(items).then((outcomes) => settle(ctx, outcomes));
  };
}
