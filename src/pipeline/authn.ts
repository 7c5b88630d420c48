// Stage 3: access token (Bearer or DPoP scheme) → identity. Verification is jose's; this stage picks the issuer,
// maps failures to the closed error set, and keeps verified tokens in a bounded cache.
import { decodeJwt, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { CompiledIssuer } from '../identity/issuers.ts';
import type { TokenCache } from '../identity/token-cache.ts';
import type { Identity, RequestContext, Stage } from './context.ts';
import { InvalidTokenError, IssuerUnavailableError, MissingTokenError } from './errors.ts';

export interface AuthnDeps {
  /** Issuers by their `iss` value. */
  readonly issuers: ReadonlyMap<string, CompiledIssuer>;
  readonly cache: TokenCache;
  readonly now?: () => number;
}

/**
 * RFC 6750 §2.1 `Bearer <token>` or RFC 9449 §7.1 `DPoP <token>` (scheme case-insensitive,
 * one space). Anything else is not a token we accept.
 */
export function extractToken(header: string | undefined): { token: string; scheme: 'bearer' | 'dpop' } | undefined {
  if (header === undefined) return undefined;
  const space = header.indexOf(' ');
  if (space !== 6 && space !== 4) return undefined;
  const scheme = header.slice(0, space).toLowerCase();
  if (scheme !== 'bearer' && scheme !== 'dpop') return undefined;
  const token = header.slice(space + 1).trim();
  return token === '' ? undefined : { token, scheme };
}

function groupsOf(payload: JWTPayload, claim: string): readonly string[] {
  const value = payload[claim];
  if (Array.isArray(value)) return Object.freeze(value.filter((g): g is string => typeof g === 'string'));
  // Some IdPs send a space-separated string (like OAuth scope).
  if (typeof value === 'string') return Object.freeze(value.split(' ').filter(Boolean));
  return Object.freeze([]);
}

// Failures that mean "we could not get the keys", not "the token is bad": the token was
// never checked, so it is refused, but as a 503 the client may retry rather than a 401.
const KEY_FETCH_FAILURES = new Set(['ERR_JWKS_TIMEOUT', 'ERR_JWKS_INVALID', 'ERR_JOSE_GENERIC']);

function translate(err: unknown): Error {
  if (err instanceof joseErrors.JOSEError && !KEY_FETCH_FAILURES.has(err.code)) {
    return new InvalidTokenError('token rejected', { cause: err });
  }
  return new IssuerUnavailableError('issuer keys unavailable', { cause: err });
}

async function verify(token: string, issuer: CompiledIssuer, nowMs: number): Promise<Identity> {
  const options = {
    issuer: issuer.issuer,
    audience: issuer.audiences as string[],
    algorithms: issuer.algorithms as string[],
    clockTolerance: issuer.clockToleranceS,
    currentDate: new Date(nowMs),
    // A token without an expiry or a subject is never acceptable at a gateway.
    requiredClaims: ['exp', 'sub'],
  };
  let payload: JWTPayload;
  try {
    // Two overloads (key resolver vs. secret) that TypeScript will not pick from a union.
    payload =
      issuer.key instanceof Uint8Array
        ? (await jwtVerify(token, issuer.key, options)).payload
        : (await jwtVerify(token, issuer.key, options)).payload;
  } catch (err) {
    throw translate(err);
  }
  return Object.freeze({
    subject: payload.sub!,
    issuer: issuer.issuer,
    issuerName: issuer.name,
    groups: groupsOf(payload, issuer.groupsClaim),
    claims: Object.freeze(payload),
    expiresAt: payload.exp,
  });
}

export function createAuthnStage(deps: AuthnDeps): Stage {
  const now = deps.now ?? Date.now;
  const { cache, issuers } = deps;

  return (ctx: RequestContext) => {
    const route = ctx.route!;
    if (route.public) return;
    const presented = extractToken(ctx.headers.authorization);
    if (presented === undefined) {
      if (ctx.headers.authorization === undefined) throw new MissingTokenError('no credentials');
      throw new InvalidTokenError('malformed Authorization header');
    }
    const { token } = presented;
    ctx.accessToken = token;
    ctx.tokenScheme = presented.scheme;

    const cached = cache.get(token, now(), ctx.connection);
    if (cached !== undefined) {
      if (!route.issuers.includes(cached.issuerName)) throw new InvalidTokenError(`issuer ${cached.issuerName} not accepted on route`);
      ctx.identity = cached;
      return;
    }
    return verifyUncached(ctx, token, route.issuers);
  };

  async function verifyUncached(ctx: RequestContext, token: string, allowed: readonly string[]): Promise<void> {
    let iss: string | undefined;
    try {
      iss = decodeJwt(token).iss; // unverified: only to choose which issuer's keys to verify with
    } catch (err) {
      throw new InvalidTokenError('undecodable token', { cause: err });
    }
    const issuer = iss === undefined ? undefined : issuers.get(iss);
    if (issuer === undefined || !allowed.includes(issuer.name)) throw new InvalidTokenError(`issuer not accepted: ${String(iss)}`);
    const identity = await verify(token, issuer, now());
    cache.set(token, identity, now(), ctx.connection);
    ctx.identity = identity;
  }
}
