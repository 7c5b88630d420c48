// Claims by type, checked once per verified token (the verified-token cache keeps the
// outcome). jose checks the signature, iss, aud, and that exp/nbf are numbers in range, but
// not that they are finite (JSON's 1e400 parses as Infinity), nor sub's type, nor iat in the
// future, nor any claim the gateway reads later. A claim of the wrong type refused here is a
// 401; let through, it became a 500 in a later stage (an auth_time of 1e20 is no Date) or a
// silently different meaning (groups: 5 read as "no groups").
import type { JWTPayload } from 'jose';

export interface ClaimRules {
  readonly groupsClaim: string;
  readonly clockToleranceS: number;
  readonly maxTokenLifetimeS: number;
}

// RFC 7638 / RFC 8705 §3.1: base64url of a SHA-256 digest, 43 characters unpadded.
const SHA256_B64URL = /^[A-Za-z0-9_-]{43}$/;

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const stringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

/**
 * Why the payload is refused, or undefined when every claim the gateway relies on has the
 * type it expects. `nowS` is the gateway's clock in seconds (fractional).
 */
export function claimProblem(payload: JWTPayload, rules: ClaimRules, nowS: number): string | undefined {
  const { sub, exp, nbf, iat } = payload;
  if (typeof sub !== 'string' || sub === '') return 'sub is not a non-empty string';
  if (!finite(exp)) return 'exp is not a finite number';
  // exp is honoured to the second, without the clock tolerance: the identity assertion the
  // gateway signs must not outlive the token it vouches for.
  if (exp <= nowS) return 'token expired';
  if (nbf !== undefined && !finite(nbf)) return 'nbf is not a finite number';
  if (iat !== undefined) {
    if (!finite(iat)) return 'iat is not a finite number';
    // A token "issued" in the future is a forged or mis-clocked one; it would also make
    // exp - iat understate its lifetime.
    if (iat > nowS + rules.clockToleranceS) return 'iat is in the future';
  }
  // Without iat, the time left is the best bound on the lifetime there is.
  if (exp - (iat ?? nowS) > rules.maxTokenLifetimeS) return 'token lifetime exceeds the issuer maximum';

  const groups = payload[rules.groupsClaim];
  // Absent, a list of strings, or one space-separated string (some IdPs, like OAuth scope).
  if (groups !== undefined && typeof groups !== 'string' && !stringArray(groups)) return `${rules.groupsClaim} is not a string or an array of strings`;
  if (payload.acr !== undefined && typeof payload.acr !== 'string') return 'acr is not a string';
  if (payload.amr !== undefined && !stringArray(payload.amr)) return 'amr is not an array of strings';
  const authTime = payload.auth_time;
  if (authTime !== undefined) {
    // Policies read it as a timestamp; before 1970 or after now is no authentication time.
    if (!finite(authTime) || authTime < 0) return 'auth_time is not a valid time';
    if (authTime > nowS + rules.clockToleranceS) return 'auth_time is in the future';
  }
  const cnf = payload.cnf;
  if (cnf !== undefined) {
    if (!isObject(cnf)) return 'cnf is not an object';
    const { jkt } = cnf;
    const x5t = cnf['x5t#S256'];
    if (jkt !== undefined && !(typeof jkt === 'string' && SHA256_B64URL.test(jkt))) return 'cnf.jkt is not a SHA-256 JWK thumbprint';
    if (x5t !== undefined && !(typeof x5t === 'string' && SHA256_B64URL.test(x5t))) return 'cnf.x5t#S256 is not a SHA-256 certificate thumbprint';
    // RFC 7800 §3.1: a confirmation the gateway cannot check must not be ignored, or the
    // token would pass as a plain bearer token.
    if (jkt === undefined && x5t === undefined) return 'cnf has no confirmation method the gateway can check (jkt, x5t#S256)';
  }
  return undefined;
}

/** The groups claim as a list; only called on a payload claimProblem() accepted. */
export function groupsOf(payload: JWTPayload, claim: string): readonly string[] {
  const value = payload[claim];
  if (Array.isArray(value)) return Object.freeze([...(value as string[])]);
  if (typeof value === 'string') return Object.freeze(value.split(' ').filter(Boolean));
  return Object.freeze([]);
}
