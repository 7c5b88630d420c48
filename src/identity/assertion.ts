// The signed identity assertion upstreams trust instead of client headers: a short-lived
// JWT (jose) saying who, from which device, with what posture, for which route. Upstreams
// verify it against the gateway's JWKS (/.well-known/zt-jwks.json).
//
// Signing costs ~150-280 µs of CPU per ES256 signature on the reference machine (measured
// with jose and node:crypto), more than the rest of the request path together, so by default
// an assertion is reused for `reuseS` seconds for the same (route, subject, groups, device,
// posture, policy set). It then carries no per-request id; X-Request-Id does. `reuseS: 0` signs
// every request and adds the request id as `rid`, for upstreams that need it signed.
//
// An assertion never outlives the access token it vouches for: its exp, and how long it is
// reused, are capped at the token's exp (else a token revoked by expiry would keep speaking
// to upstreams through its assertion for up to `lifetimeS`).
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK, type CryptoKey } from 'jose';
import { postureFields, type DeviceContext, type Identity } from '../core/domain.ts';

/** The assertion settings (the config's `assertion` section, config/schema.ts). */
export interface AssertionOptions {
  /** Request header the upstream reads the assertion from. */
  readonly header: string;
  /** The assertion's iss. */
  readonly issuer: string;
  readonly lifetimeS: number;
  /** How long one signed assertion is reused for the same subject, route and device; 0 signs every request. */
  readonly reuseS: number;
  /** Private JWK files, relative to the config's directory; the first signs. Empty: a per-process key. */
  readonly signingKeys: readonly string[];
}

/**
 * What an assertion says, read from the request (the pipeline's request context has this
 * shape): who, from which device, for which route, allowed by which policy set.
 */
export interface AssertedRequest {
  /** The request id: signed as `rid` when assertions are not reused. */
  readonly id: string;
  readonly identity?: Identity;
  readonly device?: DeviceContext;
  readonly route?: { readonly name: string };
  /** Content hash of the policy set that allowed the request. */
  readonly policySet?: string;
  /** The anomaly score (pipeline/risk.ts), when the request was scored. */
  readonly risk?: { readonly score: number; readonly flagged: boolean };
}

export interface SigningKey {
  readonly kid: string;
  readonly alg: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

export interface AssertionSigner {
  readonly header: string;
  /** Public keys of every configured signing key: the active one and those kept for overlap. */
  readonly jwks: { readonly keys: readonly JWK[] };
  /** The assertion for this request; synchronous when a reusable one is cached. */
  assertionFor(ctx: AssertedRequest, nowMs: number): string | Promise<string>;
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'];

function publicPart(jwk: JWK): JWK {
  return Object.fromEntries(Object.entries(jwk).filter(([k]) => !PRIVATE_MEMBERS.includes(k))) as JWK;
}

async function toSigningKey(privateJwk: JWK, fallbackAlg = 'ES256'): Promise<SigningKey> {
  const alg = privateJwk.alg ?? fallbackAlg;
  const publicJwk = publicPart(privateJwk);
  const kid = privateJwk.kid ?? (await calculateJwkThumbprint(publicJwk));
  const privateKey = (await importJWK(privateJwk, alg)) as CryptoKey;
  return Object.freeze({ kid, alg, privateKey, publicJwk: Object.freeze({ ...publicJwk, kid, alg, use: 'sig' }) });
}

/** A per-process key for single-instance and demo use; a fleet must share configured keys. */
export async function generateSigningKey(alg = 'ES256'): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return toSigningKey({ ...(await exportJWK(privateKey)), alg });
}

export async function loadSigningKey(file: string): Promise<SigningKey> {
  const jwk = JSON.parse(readFileSync(file, 'utf8')) as JWK;
  if (jwk.d === undefined) throw new Error(`${file}: not a private JWK (no "d")`);
  return toSigningKey(jwk);
}

/** The device as upstreams see it; no claim at all for an unbound token (absence means "unbound"). */
function deviceClaim(device: DeviceContext | undefined): Record<string, unknown> | undefined {
  if (device === undefined || device.binding === 'none') return undefined;
  const posture = device.posture;
  return {
    id: device.id,
    bind: device.binding,
    enrolled: device.enrolled,
    owner_match: device.ownerMatches,
    stale: device.stale,
    posture: posture && postureFields(posture),
  };
}

function claimsOf(ctx: AssertedRequest): Record<string, unknown> {
  const identity = ctx.identity;
  return {
    sub: identity?.subject,
    groups: identity?.groups,
    idp: identity?.issuer,
    dev: deviceClaim(ctx.device),
    pol: ctx.policySet, // the policy set that allowed the request
    risk: riskClaim(ctx.risk),
  };
}

/**
 * The risk claim: flagged, and the score in steps of 0.1 (floored). Coarse on purpose: a
 * reusable assertion is keyed by it (reuseKey), and an exact score would make every request
 * sign anew (~200 µs); the upstream's decisions need the band, the decision log has the score.
 */
function riskClaim(risk: AssertedRequest['risk']): { score: number; flagged: boolean } | undefined {
  if (risk === undefined) return undefined;
  return { score: Math.floor(risk.score * 10) / 10, flagged: risk.flagged };
}

/**
 * What a reusable assertion depends on besides the identity (the cache is per identity
 * object): the route and, for a bound device, everything the device claim says.
 */
function reuseKey(ctx: AssertedRequest, postureId: (posture: object | undefined) => number): string {
  const risk = ctx.risk === undefined ? '' : `\u0000${Math.floor(ctx.risk.score * 10)}${ctx.risk.flagged ? 'f' : ''}`;
  const route = (ctx.policySet === undefined ? ctx.route!.name : `${ctx.route!.name}\u0000${ctx.policySet}`) + risk;
  const device = ctx.device;
  if (device === undefined || device.binding === 'none') return route;
  return `${route}\u0000${device.id}\u0000${device.binding}\u0000${device.enrolled}\u0000${device.ownerMatches}\u0000${device.stale}\u0000${postureId(device.posture)}`;
}

/**
 * Registry records are frozen and replaced, never edited, so a posture object's identity
 * stands for its content: numbering them avoids serialising the posture on every request.
 */
function postureNumbering(): (posture: object | undefined) => number {
  const ids = new WeakMap<object, number>();
  let next = 1;
  return (posture) => {
    if (posture === undefined) return 0;
    let id = ids.get(posture);
    if (id === undefined) {
      id = next++;
      ids.set(posture, id);
    }
    return id;
  };
}

interface Reusable {
  jwt: Promise<string>;
  value: string | undefined;
  reuseUntilMs: number;
}

export function createAssertionSigner(
  config: AssertionOptions,
  keys: readonly SigningKey[],
): AssertionSigner {
  const active = keys[0];
  if (active === undefined) throw new Error('assertion: no signing key');
  const lifetimeS = config.lifetimeS;
  const reuseMs = Math.min(config.reuseS, lifetimeS - 5) * 1000;
  // Keyed first by the identity object (the verified-token cache hands out the same one for
  // the same token), so a repeat request costs a WeakMap and a Map lookup, no string building.
  const byIdentity = new WeakMap<object, Map<string, Reusable>>();
  const postureId = postureNumbering();

  const sign = (ctx: AssertedRequest, nowMs: number, withRequestId: boolean): Promise<string> => {
    const iat = Math.floor(nowMs / 1000);
    const tokenExp = ctx.identity?.expiresAt;
    const exp = tokenExp === undefined ? iat + lifetimeS : Math.min(iat + lifetimeS, Math.floor(tokenExp));
    return new SignJWT({ ...claimsOf(ctx), ...(withRequestId ? { rid: ctx.id } : {}) })
      .setProtectedHeader({ alg: active.alg, kid: active.kid, typ: 'zt-assertion+jwt' })
      .setIssuer(config.issuer)
      .setAudience(ctx.route!.name)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .setJti(randomUUID())
      .sign(active.privateKey);
  };

  return Object.freeze({
    header: config.header,
    jwks: Object.freeze({ keys: Object.freeze(keys.map((k) => k.publicJwk)) }),
    assertionFor(ctx: AssertedRequest, nowMs: number) {
      if (reuseMs <= 0) return sign(ctx, nowMs, true);
      const identity = ctx.identity!;
      let entries = byIdentity.get(identity);
      if (entries === undefined) {
        entries = new Map();
        byIdentity.set(identity, entries);
      }
      const key = reuseKey(ctx, postureId);
      const hit = entries.get(key);
      if (hit !== undefined && nowMs < hit.reuseUntilMs) return hit.value ?? hit.jwt;
      // Concurrent misses for the same key share one signature.
      const reuseUntilMs = identity.expiresAt === undefined ? nowMs + reuseMs : Math.min(nowMs + reuseMs, Math.floor(identity.expiresAt) * 1000);
      const entry: Reusable = { jwt: sign(ctx, nowMs, false), value: undefined, reuseUntilMs };
      entry.jwt.then(
        (jwt) => (entry.value = jwt),
        () => entries.delete(key),
      );
      // Bounded: an identity lives as long as its cached token; per identity, one entry per
      // route and device (stale ones are replaced in place).
      entries.set(key, entry);
      return entry.jwt;
    },
  });
}

export async function loadSigningKeys(config: AssertionOptions, configDir: string, fallback: SigningKey): Promise<SigningKey[]> {
  if (config.signingKeys.length === 0) return [fallback];
  return Promise.all(config.signingKeys.map((file) => loadSigningKey(resolve(configDir, file))));
}
