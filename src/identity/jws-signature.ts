// The signature step of a compact JWS (RFC 7515 §5.2 steps 1-8 for the signature only),
// with a public key, through node:crypto.
//
// Written by hand for one caller: DPoP proofs are verified on every request and never
// cached. jose 6 verifies through WebCrypto, which measured at about twice node:crypto's
// CPU on the reference machine (ES256: ~510 vs ~260 µs per verify under load). The
// callback form of crypto.verify runs on libuv's thread pool, so the event loop keeps
// serving other requests meanwhile; the synchronous form cost the DPoP route a third of
// its throughput in the benchmark (0.33 vs 0.45 of the bare proxy) by blocking it.
// ES* signatures are converted from JWS's r||s to DER here (ecdsa-sig-formatter) and the
// bare KeyObject is passed: node:crypto's own `dsaEncoding: 'ieee-p1363'` path costs the
// main thread ~40 µs per call (perf, Node 24.21): it recomputes the public point's
// encoding (a field inversion) to learn the curve size, and the `{ key, dsaEncoding }`
// wrapper makes it throw and catch a TypeError while probing for a KeyObject.
// Everything else about the proof (header rules, claims) stays in dpop.ts; access tokens
// stay with jose.
import { constants, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { joseToDer } from 'ecdsa-sig-formatter';

interface AlgorithmParams {
  readonly digest: string | null;
  readonly keyType: 'ec' | 'rsa' | 'ed25519';
  /** For EC: the curve the algorithm requires (RFC 7518 §3.4). */
  readonly curve?: string;
  /** For PS*: salt length = digest length (RFC 7518 §3.5). */
  readonly pssSalt?: number;
}

const ALGORITHMS: Readonly<Record<string, AlgorithmParams>> = {
  ES256: { digest: 'sha256', keyType: 'ec', curve: 'prime256v1' },
  ES384: { digest: 'sha384', keyType: 'ec', curve: 'secp384r1' },
  ES512: { digest: 'sha512', keyType: 'ec', curve: 'secp521r1' },
  RS256: { digest: 'sha256', keyType: 'rsa' },
  RS384: { digest: 'sha384', keyType: 'rsa' },
  RS512: { digest: 'sha512', keyType: 'rsa' },
  PS256: { digest: 'sha256', keyType: 'rsa', pssSalt: 32 },
  PS384: { digest: 'sha384', keyType: 'rsa', pssSalt: 48 },
  PS512: { digest: 'sha512', keyType: 'rsa', pssSalt: 64 },
  EdDSA: { digest: null, keyType: 'ed25519' },
  Ed25519: { digest: null, keyType: 'ed25519' },
};

/** RSA keys under 2048 bits are refused, as jose does (RFC 7518 §3.3). */
const MIN_RSA_BITS = 2048;

export interface VerificationKey {
  readonly alg: string;
  readonly key: KeyObject;
}

/** Imports a public JWK for one algorithm; throws when the key cannot serve that algorithm. */
export function importVerificationKey(jwk: Record<string, unknown>, alg: string): VerificationKey {
  const params = ALGORITHMS[alg];
  if (params === undefined) throw new TypeError(`unsupported algorithm ${alg}`);
  const key = createPublicKey({ key: jwk as never, format: 'jwk' });
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType !== params.keyType) throw new TypeError(`${alg} needs a ${params.keyType} key`);
  if (params.curve !== undefined && details?.namedCurve !== params.curve) throw new TypeError(`${alg} needs curve ${params.curve}`);
  if (params.keyType === 'rsa' && (details?.modulusLength ?? 0) < MIN_RSA_BITS) throw new TypeError(`${alg} needs a key of at least ${MIN_RSA_BITS} bits`);
  return { alg, key };
}

/** Resolves true when the third part of `jws` is a valid signature over its first two with `key`. */
export function verifyCompactSignature(jws: string, { alg, key }: VerificationKey): Promise<boolean> {
  const params = ALGORITHMS[alg]!;
  const lastDot = jws.lastIndexOf('.');
  const signingInput = Buffer.from(jws.slice(0, lastDot), 'latin1');
  return new Promise((resolve) => {
    try {
      const signature = Buffer.from(jws.slice(lastDot + 1), 'base64url');
      // JWS signatures are r||s (RFC 7518 §3.4); joseToDer throws on a wrong length.
      const sig = params.keyType === 'ec' ? joseToDer(signature, alg) : signature;
      const keyInput = params.pssSalt !== undefined ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: params.pssSalt } : key;
      // A signature of the wrong length or encoding is simply not valid: false, not an error.
      verify(params.digest, signingInput, keyInput, sig, (err, valid) => resolve(err === null && valid));
    } catch {
      resolve(false);
    }
  });
}
