// Stage 3: access token (Bearer or DPoP scheme) → identity. Verification is jose's; this stage picks the issuer,
// maps failures to the closed error set, and keeps verified tokens in a bounded cache.
import { decodeJwt, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { claimProblem, groupsOf } from '../identity/claims.ts';
import type { CompiledIssuer } from '../identity/issuers.ts';
import type { TokenCache } from '../identity/token-cache.ts';
import type { Identity, RequestContext, Stage } from './context.ts';
import { BadRequestError, InvalidTokenError, IssuerUnavailableError, MissingTokenError } from '../core/errors.ts';

export interface AuthnDeps {
  /** Issuers by their `iss` value. */
  readonly issuers: ReadonlyMap<string, CompiledIssuer>;
  readonly cache: TokenCache;
  /** identity.dpop.algorithms: advertised in the DPoP challenge of a device-bound route's 401 (RFC 9449 §7.1). */
  readonly dpopAlgorithms?: readonly string[];
  readonly now?: () => number;
}

const REALM = 'zt-gateway';

/**
 * More than one Authorization field: the gateway and an upstream (or a later hop) could each
 * read a different credential. Node keeps only the first in `headers`, so count the raw lines.
 */
function repeatedAuthorization(raw: readonly string[]): boolean {
  let seen = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== 13 || name.toLowerCase() !== 'authorization') continue;
    if (seen) return true;
    seen = true;
  }
  return false;
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
  // Types of the claims the gateway reads (sub, exp, iat, groups, auth_time, cnf…), iat not
  // in the future, the issuer's maximum lifetime: see identity/claims.ts.
  const problem = claimProblem(payload, issuer, nowMs / 1000);
  if (problem !== undefined) throw new InvalidTokenError(`token rejected: ${problem}`);
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
  // RFC 9449 §7.1: a route that requires a device-bound token offers the DPoP scheme (with
  // the proof algorithms it takes) beside Bearer (RFC 8705 certificate-bound tokens).
  const dpopChallenge = `DPoP realm="${REALM}", algs="${(deps.dpopAlgorithms ?? []).join(' ')}"`;
  const boundRouteMissing = { 'www-authenticate': `Bearer realm="${REALM}", ${dpopChallenge}` };
  const boundRouteInvalid = {
    'www-authenticate': `Bearer realm="${REALM}", error="invalid_token", error_description="The access token is invalid or expired", ${dpopChallenge}`,
  };

  return (ctx: RequestContext) => {
    const route = ctx.route!;
    // Checked on every route, public ones too: one request, one credential (RFC 9110 §5.3
    // allows repeating only list-valued fields; Authorization is not one).
    if (ctx.headers.authorization !== undefined && repeatedAuthorization(ctx.rawHeaders)) {
      throw new BadRequestError('more than one Authorization header');
    }
    if (route.public) return;
    const bound = route.deviceBinding === 'required';
    const presented = extractToken(ctx.headers.authorization);
    if (presented === undefined) {
      if (ctx.headers.authorization === undefined) throw new MissingTokenError('no credentials', bound ? { headers: boundRouteMissing } : undefined);
      throw new InvalidTokenError('malformed Authorization header', bound ? { headers: boundRouteInvalid } : undefined);
    }
    const { token } = presented;
    ctx.accessToken = token;
    ctx.tokenScheme = presented.scheme;

    const cached = cache.get(token, now(), ctx.connection);
    if (cached !== undefined) {
      if (!route.issuers.includes(cached.issuerName)) {
        throw new InvalidTokenError(`issuer ${cached.issuerName} not accepted on route`, bound ? { headers: boundRouteInvalid } : undefined);
      }
      ctx.identity = cached;
      return;
    }
    return bound ? withBoundChallenge(verifyUncached(ctx, token, route.issuers)) : verifyUncached(ctx, token, route.issuers);
  };

  async function withBoundChallenge(verifying: Promise<void>): Promise<void> {
    try {
      await verifying;
    } catch (err) {
      if (err instanceof InvalidTokenError) throw new InvalidTokenError(err.message, { cause: err.cause, headers: boundRouteInvalid });
      throw err;
    }
  }

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
