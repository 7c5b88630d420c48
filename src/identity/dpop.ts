// DPoP proof verification, RFC 9449 §4.3 and §7.1: the request carries a JWT signed by the
// client's key, bound to this method and URI, to this access token (ath) and, through the
// token's cnf.jkt, to the key the token was issued for. A stolen token without the private
// key is useless; a captured proof is useless on another URI, after its window, or twice.
//
// Pure apart from the injected replay cache and clock: no config reading, no response
// writing. Not jose's jwtVerify + EmbeddedJWK: that imports the header's key on every call
// (WebCrypto importKey, ~150 µs here), its typ option accepts "application/dpop+jwt" and
// any case, and its WebCrypto verify costs twice node:crypto's (see jws-signature.ts).
// Keys are imported once per thumbprint.
// Failures are DpopProofError with a stable `reason` (logs, metrics, tests) and a
// `kind` that is the RFC 9449 error code the caller puts in WWW-Authenticate.
import { createHash, createHmac, hash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { decodeProtectedHeader, type JWK } from 'jose';
import { importVerificationKey, verifyCompactSignature, type VerificationKey } from './jws-signature.ts';
import { LRUCache } from 'lru-cache';
import type { ReplayCache } from './replay-cache.ts';

// ---------------------------------------------------------------------------------------
// Errors

/** The closed set of reasons, each one check. The message per reason is all a log gets: never the token or proof. */
const REASONS = {
  missing: 'no DPoP header',
  multiple: 'more than one DPoP header',
  malformed: 'DPoP proof is not a well-formed JWS/JWT',
  typ: 'DPoP proof "typ" is not "dpop+jwt"',
  alg: 'DPoP proof "alg" is not an accepted asymmetric algorithm',
  jwk: 'DPoP proof "jwk" header is missing, invalid or unusable with its "alg"',
  jwk_private: 'DPoP proof "jwk" header contains private key material',
  signature: 'DPoP proof signature does not verify with its "jwk"',
  htm: 'DPoP proof "htm" does not match the request method',
  htu: 'DPoP proof "htu" does not match the request URI',
  iat: 'DPoP proof "iat" is missing or outside the accepted window',
  jti: 'DPoP proof "jti" is missing, not a string, or too long',
  jti_replay: 'DPoP proof "jti" was already used',
  ath: 'DPoP proof "ath" does not match the access token',
  jkt_mismatch: 'DPoP key is not the key the access token is bound to',
  nonce_missing: 'DPoP proof has no "nonce" and the server requires one',
  nonce: 'DPoP proof "nonce" is not a current server nonce',
} as const;

export type DpopFailureReason = keyof typeof REASONS;
export const DPOP_FAILURE_REASONS = Object.freeze(Object.keys(REASONS) as DpopFailureReason[]);

/**
 * What a DPoP refusal is counted and logged as: the verifier's reasons, plus `scheme`, a
 * DPoP-bound token presented with the Bearer scheme (RFC 9449 §7.1), which the caller
 * catches before any proof is read. A closed set, so metric labels stay bounded.
 */
export type DpopFailureLabel = DpopFailureReason | 'scheme';
export const DPOP_FAILURE_LABELS: readonly DpopFailureLabel[] = Object.freeze([...DPOP_FAILURE_REASONS, 'scheme']);

/**
 * `invalid_dpop_proof` → 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"`.
 * `use_dpop_nonce` → 401 with `error="use_dpop_nonce"` and a fresh `DPoP-Nonce` header
 * (RFC 9449 §9): the client retries with the nonce, so it is not an attack signal.
 */
export class DpopProofError extends Error {
  readonly reason: DpopFailureReason;
  readonly kind: 'invalid_dpop_proof' | 'use_dpop_nonce';

  constructor(reason: DpopFailureReason, options?: { cause?: unknown }) {
    super(REASONS[reason], options);
    this.name = 'DpopProofError';
    this.reason = reason;
    this.kind = reason === 'nonce' || reason === 'nonce_missing' ? 'use_dpop_nonce' : 'invalid_dpop_proof';
  }
}

/** The replay cache could not answer: the proof was not checked for replay, so the caller fails closed. */
export class DpopReplayStoreError extends Error {
  constructor(options: { cause: unknown }) {
    super('DPoP replay cache unavailable', options);
    this.name = 'DpopReplayStoreError';
  }
}

// ---------------------------------------------------------------------------------------
// Options

export interface DpopOptions {
  /** Accepted JWS algorithms. Asymmetric only: HS* (a shared secret is no proof of possession) and none are refused at creation. */
  algorithms: string[];
  /** How far in the past `iat` may be, in seconds. */
  maxAgeS: number;
  /** How far in the future `iat` may be (client clock ahead), in seconds. */
  futureSkewS: number;
  replay: ReplayCache;
  /** Server nonces (RFC 9449 §8); every instance needs the same secret. */
  nonce?: { secret: Uint8Array; windowS: number };
  /** Wall clock in milliseconds (iat is wall-clock time). Default Date.now. */
  now?: () => number;
  /** Imported public keys kept, by algorithm and thumbprint. Default 1024. */
  keyCacheSize?: number;
}

export interface DpopVerifyInput {
  /** The single DPoP header value (see singleDpopHeader), undefined when there was none. */
  proof: string | undefined;
  method: string;
  /** The request URI as the client addressed it: scheme://host[:port]/path, no query or fragment. */
  htu: string;
  accessToken: string;
  /** The access token's cnf.jkt (RFC 9449 §6.1). */
  expectedJkt: string;
}

export interface DpopVerified {
  jkt: string;
  jti: string;
}

export interface DpopVerifier {
  verify(input: DpopVerifyInput): Promise<DpopVerified>;
  /** The nonce to send in `DPoP-Nonce`, valid for one to two windows. Throws when nonces are off (a caller bug). */
  issueNonce(): string;
  /** Whether proofs must carry a server nonce. */
  readonly noncesEnabled: boolean;
  /** How long a jti is remembered: size a memory replay cache at peak proofs/s × this. */
  readonly replayTtlMs: number;
}

// JWS algorithms jose verifies with an asymmetric key. Anything else, notably none and HS*,
// is refused when the verifier is built, not discovered on the first request.
const ASYMMETRIC_ALGS: ReadonlySet<string> = new Set([
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
]);

// RFC 7517/7518 members that carry private or symmetric key material. A proof carrying
// them is refused even though only the public part would be used: the client has leaked
// its key, and accepting it teaches clients that doing so works.
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'] as const;

// A proof is a header (with an RSA-4096 jwk at most ~900 chars), a few claims and a
// signature. Far larger is an attempt to make us decode and hash junk.
const MAX_PROOF_LENGTH = 8192;
// RFC 7518 §3.3 asks for 2048 bits at least (jose enforces that); the upper bound stops a
// client making every verify cost a huge modular exponentiation. 4096 bits = 683 base64url chars.
const MAX_RSA_MODULUS_CHARS = 683;
const MAX_JTI_LENGTH = 256;
// The replay window is the iat window, plus a margin: iat is accepted at the boundary
// instant itself, and with several instances the iat check runs on each instance's clock
// while Redis expires keys on its own. Instance clocks must agree to within this margin.
const REPLAY_TTL_MARGIN_MS = 1000;
const NONCE_MIN_SECRET_BYTES = 32;

// ---------------------------------------------------------------------------------------
// Helpers

/**
 * The one DPoP header value, undefined when absent. RFC 9449 §4.3 step 1: more than one is
 * an error. Takes the raw header lines (exact) or Node's parsed headers, where Node joins
 * repeated unknown headers with ", " — a JWS never contains a comma, so one means several.
 */
export function singleDpopHeader(headers: IncomingHttpHeaders | readonly string[]): string | undefined {
  if (Array.isArray(headers)) {
    const raw = headers as readonly string[];
    let found: string | undefined;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      if (raw[i]!.length !== 4 || raw[i]!.toLowerCase() !== 'dpop') continue;
      if (found !== undefined) throw new DpopProofError('multiple');
      found = raw[i + 1]!;
    }
    if (found !== undefined && found.includes(',')) throw new DpopProofError('multiple');
    return found;
  }
  const value = (headers as IncomingHttpHeaders).dpop;
  if (value === undefined) return undefined;
  if (Array.isArray(value)) {
    if (value.length !== 1) throw new DpopProofError('multiple');
    return singleValue(value[0]!);
  }
  return singleValue(value);
}

function singleValue(value: string): string {
  if (value.includes(',')) throw new DpopProofError('multiple');
  return value;
}

/**
 * RFC 9449 §4.3 step 9 with RFC 3986 §6.2.2–6.2.3 normalisation: scheme and host
 * lower-cased, default port dropped, dot segments removed, percent-encodings of unreserved
 * characters decoded and the rest upper-cased; query and fragment ignored. Undefined when
 * not an absolute http(s) URI without userinfo.
 */
export function normalizeHtu(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
  if (url.username !== '' || url.password !== '') return undefined;
  const path = url.pathname.includes('%') ? url.pathname.replace(PCT, normalizePct) : url.pathname;
  return `${url.protocol}//${url.host}${path}`;
}

const PCT = /%([0-9A-Fa-f]{2})/g;
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
function normalizePct(_match: string, hex: string): string {
  const ch = String.fromCharCode(Number.parseInt(hex, 16));
  return UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
}

/** RFC 7638 thumbprint, computed synchronously: jose's calculateJwkThumbprint goes through
 * crypto.subtle.digest and measured ~75 µs here against ~5 µs for node:crypto. Returns the
 * required members too, which are all that is ever imported. */
function thumbprint(jwk: Record<string, unknown>): { jkt: string; members: JWK } | undefined {
  const str = (v: unknown): v is string => typeof v === 'string' && v !== '';
  let members: JWK;
  switch (jwk.kty) {
    case 'EC':
      if (!str(jwk.crv) || !str(jwk.x) || !str(jwk.y)) return undefined;
      members = { crv: jwk.crv, kty: 'EC', x: jwk.x, y: jwk.y };
      break;
    case 'OKP':
      if (!str(jwk.crv) || !str(jwk.x)) return undefined;
      members = { crv: jwk.crv, kty: 'OKP', x: jwk.x };
      break;
    case 'RSA':
      if (!str(jwk.e) || !str(jwk.n) || jwk.n.length > MAX_RSA_MODULUS_CHARS) return undefined;
      members = { e: jwk.e, kty: 'RSA', n: jwk.n };
      break;
    default:
      return undefined;
  }
  // Members are in lexicographic order above, as RFC 7638 §3.3 requires.
  const jkt = createHash('sha256').update(JSON.stringify(members)).digest('base64url');
  return { jkt, members };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------
// Verifier

export function createDpopVerifier(opts: DpopOptions): DpopVerifier {
  if (opts.algorithms.length === 0) throw new Error('dpop: algorithms must not be empty');
  for (const alg of opts.algorithms) {
    if (!ASYMMETRIC_ALGS.has(alg)) {
      throw new Error(`dpop: algorithm ${JSON.stringify(alg)} not accepted; use asymmetric algorithms only (${[...ASYMMETRIC_ALGS].join(', ')})`);
    }
  }
  if (!(Number.isFinite(opts.maxAgeS) && opts.maxAgeS > 0)) throw new Error('dpop: maxAgeS must be a positive number');
  if (!(Number.isFinite(opts.futureSkewS) && opts.futureSkewS >= 0)) throw new Error('dpop: futureSkewS must be a non-negative number');
  if (opts.nonce !== undefined) {
    if (opts.nonce.secret.byteLength < NONCE_MIN_SECRET_BYTES) throw new Error(`dpop: nonce secret must be at least ${NONCE_MIN_SECRET_BYTES} bytes`);
    if (!(Number.isFinite(opts.nonce.windowS) && opts.nonce.windowS > 0)) throw new Error('dpop: nonce windowS must be a positive number');
  }

  const algorithms: ReadonlySet<string> = new Set(opts.algorithms);
  const { maxAgeS, futureSkewS, replay } = opts;
  const now = opts.now ?? Date.now;
  const replayTtlMs = Math.ceil((maxAgeS + futureSkewS) * 1000) + REPLAY_TTL_MARGIN_MS;
  // A device sends the same jwk on every request; importing it each time is wasted work.
  // Keyed by alg too: a key is checked against one algorithm's requirements.
  const keys = new LRUCache<string, VerificationKey>({ max: opts.keyCacheSize ?? 1024 });
  const nonces = opts.nonce === undefined ? undefined : createNonces(opts.nonce.secret, opts.nonce.windowS);

  function importKey(alg: string, jkt: string, members: JWK): VerificationKey {
    const cacheKey = `${alg}.${jkt}`;
    let key = keys.get(cacheKey);
    if (key === undefined) {
      try {
        key = importVerificationKey(members as Record<string, unknown>, alg);
      } catch (err) {
        throw new DpopProofError('jwk', { cause: err });
      }
      keys.set(cacheKey, key);
    }
    return key;
  }

  /**
   * Steps 2, 4-7 on the protected header: which key, and is it acceptable. A device sends
   * the same header (typ, alg, jwk) with every proof, so the outcome of these checks is
   * remembered per header segment; only a header that passed them is remembered.
   */
  const headers = new LRUCache<string, { jkt: string; key: VerificationKey }>({ max: opts.keyCacheSize ?? 1024 });
  function checkedHeader(segment: string): { jkt: string; key: VerificationKey } {
    const known = headers.get(segment);
    if (known !== undefined) return known;
    // Step 2: a well-formed JWT. The header is read unverified here, only to decide which
    // key to verify with; nothing from it is trusted until the signature checks.
    let header: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(`${segment}..`) as Record<string, unknown>;
    } catch (err) {
      throw new DpopProofError('malformed', { cause: err });
    }
    // No extensions: "b64": false would change what the signature covers.
    if (header.crit !== undefined || header.b64 !== undefined) throw new DpopProofError('malformed');
    // Step 4. Exact: jose's typ option would also accept "application/dpop+jwt".
    if (header.typ !== 'dpop+jwt') throw new DpopProofError('typ');
    // Step 5.
    const alg = header.alg;
    if (typeof alg !== 'string' || !algorithms.has(alg)) throw new DpopProofError('alg');
    // Step 7 (checked before the signature: cheaper, and refused either way).
    const jwk = header.jwk;
    if (!isObject(jwk)) throw new DpopProofError('jwk');
    for (const m of PRIVATE_JWK_MEMBERS) if (jwk[m] !== undefined) throw new DpopProofError('jwk_private');
    // What jose's EmbeddedJWK also insists on, since only the required members are imported.
    if (jwk.use !== undefined && jwk.use !== 'sig') throw new DpopProofError('jwk');
    if (jwk.alg !== undefined && jwk.alg !== alg) throw new DpopProofError('jwk');
    if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) throw new DpopProofError('jwk');
    const tp = thumbprint(jwk);
    if (tp === undefined) throw new DpopProofError('jwk');
    // Step 6 needs the key imported for this algorithm.
    const checked = { jkt: tp.jkt, key: importKey(alg, tp.jkt, tp.members) };
    headers.set(segment, checked);
    return checked;
  }

  // The same URIs come back request after request; URL parsing is the costly part.
  const htus = new LRUCache<string, string | false>({ max: 1024 });
  function normalizedHtu(value: string): string | undefined {
    let normalized = htus.get(value);
    if (normalized === undefined) {
      normalized = normalizeHtu(value) ?? false;
      htus.set(value, normalized);
    }
    return normalized === false ? undefined : normalized;
  }

  async function verify(input: DpopVerifyInput): Promise<DpopVerified> {
    const { proof } = input;
    // §4.3 step 1 (more than one is singleDpopHeader's to catch).
    if (proof === undefined) throw new DpopProofError('missing');
    if (typeof proof !== 'string' || proof.length > MAX_PROOF_LENGTH) throw new DpopProofError('malformed');
    const parts = proof.split('.');
    if (parts.length !== 3) throw new DpopProofError('malformed');

    const { jkt, key } = checkedHeader(parts[0]!);
    // Step 12 / §7.1: the proof's key must be the token's. Before the signature, so a
    // proof made with some other key costs no public-key operation.
    if (jkt !== input.expectedJkt) throw new DpopProofError('jkt_mismatch');
    if (!(await verifyCompactSignature(proof, key))) throw new DpopProofError('signature');
    let claims: unknown;
    try {
      claims = JSON.parse(utf8.decode(Buffer.from(parts[1]!, 'base64url')));
    } catch (err) {
      throw new DpopProofError('malformed', { cause: err });
    }
    if (!isObject(claims)) throw new DpopProofError('malformed');

    // Step 8. Methods are case-sensitive (RFC 9110 §9.1).
    if (claims.htm !== input.method) throw new DpopProofError('htm');
    // Step 9.
    const expectedHtu = normalizedHtu(input.htu);
    if (typeof claims.htu !== 'string' || expectedHtu === undefined || normalizedHtu(claims.htu) !== expectedHtu) {
      throw new DpopProofError('htu');
    }
    // Step 11: the proof was made recently (and not far in the future).
    const iat = claims.iat;
    const nowMs = now();
    const nowS = nowMs / 1000;
    if (typeof iat !== 'number' || !Number.isFinite(iat) || iat < nowS - maxAgeS || iat > nowS + futureSkewS) {
      throw new DpopProofError('iat');
    }
    // Step 3 / §4.2: jti is a required claim; bounded since it becomes a cache key.
    const jti = claims.jti;
    if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI_LENGTH) throw new DpopProofError('jti');
    // Step 12 / §7.1: the proof was made for this access token.
    const ath = hash('sha256', input.accessToken, 'base64url'); // one-shot: no Hash object per request
    if (claims.ath !== ath) throw new DpopProofError('ath');
    // Step 10.
    if (nonces !== undefined) {
      if (claims.nonce === undefined) throw new DpopProofError('nonce_missing');
      if (typeof claims.nonce !== 'string' || !nonces.isValid(claims.nonce, nowMs)) throw new DpopProofError('nonce');
    }

    // Replay (§11.1), last: only a proof that passed every other check may claim its jti,
    // so an invalid proof cannot burn a jti a valid one will use. Scoped by key: jti
    // uniqueness is only the client's promise for its own proofs. The jkt is also the
    // partition: one key's flood of fresh proofs fills its own share of a memory cache,
    // not everyone's.
    let first: boolean;
    try {
      first = await replay.checkAndRemember(`${jkt}:${jti}`, replayTtlMs, jkt);
    } catch (err) {
      throw new DpopReplayStoreError({ cause: err });
    }
    if (!first) throw new DpopProofError('jti_replay');
    return { jkt, jti };
  }

  return {
    verify,
    issueNonce() {
      if (nonces === undefined) throw new Error('dpop: issueNonce() called but no nonce secret is configured');
      return nonces.current(now());
    },
    noncesEnabled: nonces !== undefined,
    replayTtlMs,
  };
}

/**
 * Stateless server nonces (RFC 9449 §8): base64url(HMAC-SHA256(secret, timeSlot)) with
 * timeSlot = floor(now / windowS). Nothing to store or share but the secret; a nonce is
 * accepted in its own slot and the next, so it lives between one and two windows.
 */
function createNonces(secret: Uint8Array, windowS: number) {
  const windowMs = windowS * 1000;
  // Two slots are ever asked for; remember the last few instead of an HMAC per request.
  const memo = new Map<number, Buffer>();
  const forSlot = (slot: number): Buffer => {
    let mac = memo.get(slot);
    if (mac === undefined) {
      mac = createHmac('sha256', secret).update(String(slot)).digest();
      if (memo.size >= 4) memo.delete(memo.keys().next().value!);
      memo.set(slot, mac);
    }
    return mac;
  };
  const slotAt = (nowMs: number): number => Math.floor(nowMs / windowMs);
  return {
    current: (nowMs: number): string => forSlot(slotAt(nowMs)).toString('base64url'),
    isValid(nonce: string, nowMs: number): boolean {
      // 32 bytes are 43 base64url chars; anything else cannot match and is not decoded.
      if (nonce.length !== 43) return false;
      const given = Buffer.from(nonce, 'base64url');
      if (given.length !== 32 || given.toString('base64url') !== nonce) return false;
      const slot = slotAt(nowMs);
      return timingSafeEqual(given, forSlot(slot)) || timingSafeEqual(given, forSlot(slot - 1));
    },
  };
}
