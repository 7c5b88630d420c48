// Key files for the CLI: `ztgw keys generate` writes a private JWK (an assertion signing key
// for assertion.signingKeys, or a device's DPoP key), and the thumbprints a registry and a
// bound token name are read from key and certificate files here, computed the way the
// gateway computes them (RFC 7638 for a DPoP key, RFC 8705 §3.1 x5t#S256 for a certificate).
import { createPrivateKey, createPublicKey, hash, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';

/** The algorithms a generated key may use: what the `dpop` client signs with, and jose signs assertions with. */
export const KEY_ALGS = ['ES256', 'Ed25519', 'RS256', 'PS256'] as const;
export type KeyAlg = (typeof KEY_ALGS)[number];

/** A key or certificate file that cannot be used as asked: bad input, exit 2. */
export class KeyFileError extends Error {}

export const KEYS_USAGE = `usage: ztgw keys generate --out FILE [--alg ES256|Ed25519|RS256|PS256]

  generate   write a new private key as a JWK file (mode 0600; an existing FILE is never
             overwritten) and print its thumbprint. Use it as an assertion signing key
             (assertion.signingKeys in the config) or as a device's DPoP key
             (ztgw device id --key FILE, ztgw token --dpop-key FILE, ztgw dpop curl --key FILE).
             Default alg ES256.
`;

// Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS = new Set(['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']);

export interface KeyFile {
  /** The public key as a JWK: kty and its key members only, as a DPoP proof's header carries it. */
  readonly publicJwk: JWK;
  /** Present when the file holds the private key. */
  readonly privateJwk?: JWK;
  /** The alg the file names, if any (a JWK's "alg"). */
  readonly alg?: string;
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new KeyFileError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

/**
 * A key file as `keys generate` writes it (a private JWK), any JWK, or a PEM key
 * (PKCS#8, SPKI, SEC1, PKCS#1). Public keys are enough for thumbprints.
 */
export function readKeyFile(file: string): KeyFile {
  const text = readText(file);
  let key: KeyObject;
  let alg: string | undefined;
  try {
    if (text.trimStart().startsWith('{')) {
      const jwk = JSON.parse(text) as JWK;
      if (typeof jwk.alg === 'string') alg = jwk.alg;
      const isPrivate = Object.keys(jwk).some((m) => PRIVATE_MEMBERS.has(m));
      if (jwk.kty === 'oct') throw new Error('a symmetric key proves nothing about a device');
      key = isPrivate ? createPrivateKey({ key: jwk as never, format: 'jwk' }) : createPublicKey({ key: jwk as never, format: 'jwk' });
    } else {
      key = text.includes('PRIVATE KEY') ? createPrivateKey(text) : createPublicKey(text);
    }
  } catch (e) {
    throw new KeyFileError(`${file}: not a usable JWK or PEM key (${(e as Error).message})`);
  }
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  const publicJwk = publicKey.export({ format: 'jwk' }) as JWK;
  return {
    publicJwk,
    ...(key.type === 'private' && { privateJwk: key.export({ format: 'jwk' }) as JWK }),
    ...(alg !== undefined && { alg }),
  };
}

/** RFC 7638 SHA-256 thumbprint of a key file's public key: a DPoP token's cnf.jkt, a device's id. */
export async function keyThumbprint(file: string): Promise<string> {
  return calculateJwkThumbprint(readKeyFile(file).publicJwk, 'sha256');
}

/** RFC 8705 §3.1 x5t#S256 of the first certificate in a PEM file: an mTLS token's cnf, a device's id. */
export function certThumbprint(file: string): string {
  const text = readText(file);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(text);
  } catch (e) {
    throw new KeyFileError(`${file}: not a PEM certificate (${(e as Error).message})`);
  }
  return hash('sha256', cert.raw, 'base64url');
}

/** The alg a key signs DPoP proofs with: the file's own, else the one its key type implies. */
export function signingAlg(key: KeyFile): KeyAlg {
  const { kty, crv } = key.publicJwk;
  const implied = kty === 'EC' && crv === 'P-256' ? 'ES256' : kty === 'OKP' && crv === 'Ed25519' ? 'Ed25519' : kty === 'RSA' ? 'PS256' : undefined;
  const alg = key.alg === 'EdDSA' ? 'Ed25519' : (key.alg ?? implied);
  if (!KEY_ALGS.includes(alg as KeyAlg)) {
    throw new KeyFileError(`the key's algorithm ${alg ?? `(${kty}${crv ? ` ${crv}` : ''})`} is not one of ${KEY_ALGS.join(', ')}`);
  }
  return alg as KeyAlg;
}

/** Writes a new private JWK to `out`, never over an existing file; returns its thumbprint. */
export async function generateKeyFile(out: string, alg: KeyAlg): Promise<string> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub, 'sha256');
  const jwk = { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
  mkdirSync(dirname(resolve(out)), { recursive: true, mode: 0o700 });
  try {
    // 'wx': an existing file may be someone's only copy of a key a registry or a fleet trusts.
    writeFileSync(out, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KeyFileError(code === 'EEXIST' ? `${out} exists; it is not overwritten (remove it or choose another --out)` : `${out}: cannot write (${code ?? String(e)})`);
  }
  return kid;
}

export async function runKeysCommand(args: string[], out: NodeJS.WritableStream): Promise<void> {
  const [command, ...rest] = args;
  if (command !== 'generate') throw new KeysUsageError(command === undefined ? 'keys: a command is required' : `unknown keys command "${command}"`);
  const { values } = parseArgs({
    args: rest,
    strict: true,
    allowPositionals: false,
    options: { out: { type: 'string', short: 'o' }, alg: { type: 'string', default: 'ES256' } },
  });
  if (values.out === undefined) throw new KeysUsageError('keys generate: --out FILE is required');
  if (!KEY_ALGS.includes(values.alg as KeyAlg)) throw new KeysUsageError(`keys generate: --alg must be one of ${KEY_ALGS.join(', ')}, got "${values.alg}"`);
  const kid = await generateKeyFile(values.out, values.alg as KeyAlg);
  out.write(`wrote ${values.out} (${values.alg} private JWK, mode 0600); thumbprint ${kid}\n`);
}

/** A usage mistake in `ztgw keys`: the caller prints it with KEYS_USAGE, exit 2. */
export class KeysUsageError extends Error {}

export const DEVICE_ID_USAGE = `usage: ztgw device id --key FILE | --cert FILE

  Print the fingerprint a device is enrolled by (ztgw device enroll --id): the RFC 7638
  thumbprint of its DPoP key (a JWK or PEM key file, public or private), or the x5t#S256
  of its client certificate (a PEM file). Needs no --config.
`;

/** `ztgw device id --key FILE | --cert FILE`: the fingerprint alone on stdout, for `$(…)`. */
export async function runDeviceIdCommand(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  let values: { key?: string; cert?: string };
  try {
    ({ values } = parseArgs({ args, strict: true, allowPositionals: false, options: { key: { type: 'string' }, cert: { type: 'string' } } }));
  } catch (e) {
    err.write(`ztgw device: id: ${(e as Error).message}\n\n${DEVICE_ID_USAGE}`);
    return 2;
  }
  if ((values.key === undefined) === (values.cert === undefined)) {
    err.write(`ztgw device: id: give one of --key FILE or --cert FILE\n\n${DEVICE_ID_USAGE}`);
    return 2;
  }
  try {
    out.write(`${values.key !== undefined ? await keyThumbprint(values.key) : certThumbprint(values.cert!)}\n`);
    return 0;
  } catch (e) {
    if (!(e instanceof KeyFileError)) throw e;
    err.write(`ztgw device: id: ${e.message}\n`);
    return 2;
  }
}
