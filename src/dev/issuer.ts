// A development and test token issuer: the other end of the gateway's JWT check.
// Tests use it to mint valid, expired, not-yet-valid, wrong-audience and
// unknown-kid tokens against real keys; the demo persists one on disk so that
// `npm run token` and the running gateway agree across restarts.

import { randomUUID } from 'node:crypto';
import { chmod, link, mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, SignJWT, type CryptoKey, type JWK } from 'jose';

export type IssuerAlg = 'ES256' | 'RS256' | 'EdDSA';
const ALGS: readonly IssuerAlg[] = ['ES256', 'RS256', 'EdDSA'];

/**
 * A private JWK as exportPrivate() writes it. `iss` is not a registered JWK member
 * (RFC 7517 §4 says unknown members are ignored); keeping the issuer id beside the key
 * means one file is enough to restore an issuer.
 */
export type PrivateJwk = JWK & { kty: string; kid: string; alg: IssuerAlg; iss: string };

export interface SignOptions {
  sub?: string;
  aud?: string | string[];
  /** A jose time span ('5m', '-1h', '2 hours ago') or seconds from now; default '5m'. */
  expiresIn?: string | number;
  /** Same forms as expiresIn. */
  notBefore?: string | number;
  /** Put this kid in the header instead of the signing key's (unknown-kid tests). */
  kid?: string;
  /** Merged over the default header {alg, typ: 'JWT', kid}. */
  header?: Record<string, unknown>;
}

interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  privateJwk: PrivateJwk;
  publicJwk: JWK;
}

// Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

export class Issuer {
  readonly issuer: string;
  readonly alg: IssuerAlg;
  // One reference, swapped whole by rotate(), so a sign() racing a rotate() uses a
  // consistent key and kid.
  #key: SigningKey;

  private constructor(issuer: string, alg: IssuerAlg, key: SigningKey) {
    this.issuer = issuer;
    this.alg = alg;
    this.#key = key;
  }

  static async create(opts: { issuer: string; alg?: IssuerAlg; kid?: string }): Promise<Issuer> {
    const alg = opts.alg ?? 'ES256';
    assertAlg(alg);
    return new Issuer(opts.issuer, alg, await generateSigningKey(opts.issuer, alg, opts.kid));
  }

  /** Restores an issuer saved with exportPrivate(); `issuer` overrides the saved id. */
  static async fromPrivate(jwk: PrivateJwk, opts: { issuer?: string } = {}): Promise<Issuer> {
    const issuer = opts.issuer ?? jwk.iss;
    if (typeof issuer !== 'string' || issuer === '') throw new TypeError('private JWK has no "iss" and no issuer was given');
    assertAlg(jwk.alg);
    if (typeof jwk.kid !== 'string' || jwk.kid === '') throw new TypeError('private JWK has no "kid"');
    if (!PRIVATE_MEMBERS.some((m) => m in jwk)) throw new TypeError('JWK is not a private key');
    const privateKey = (await importJWK(jwk, jwk.alg, { extractable: true })) as CryptoKey;
    const privateJwk: PrivateJwk = { ...jwk, iss: issuer };
    return new Issuer(issuer, jwk.alg, { kid: jwk.kid, privateKey, privateJwk, publicJwk: publicPart(privateJwk) });
  }

  get kid(): string {
    return this.#key.kid;
  }

  /** The JWKS a gateway would fetch: only the current key (see rotate()). */
  publicJwks(): { keys: JWK[] } {
    return { keys: [{ ...this.#key.publicJwk }] };
  }

  /**
   * Claims are layered: defaults (iss, iat, exp = now + 5m, jti) < `claims` < `opts`.
   * So `sign({ exp: 1 })` issues a token expired in 1970 and `sign({ iss: 'evil' })` a
   * wrong-issuer one; the gateway's checks can be tested without a second issuer.
   */
  async sign(claims: Record<string, unknown>, opts: SignOptions = {}): Promise<string> {
    const key = this.#key;
    const jwt = new SignJWT({ iss: this.issuer, jti: randomUUID(), ...claims });
    if (!('iat' in claims)) jwt.setIssuedAt();
    if (opts.expiresIn !== undefined) jwt.setExpirationTime(relative(opts.expiresIn));
    else if (!('exp' in claims)) jwt.setExpirationTime('5m');
    if (opts.notBefore !== undefined) jwt.setNotBefore(relative(opts.notBefore));
    if (opts.sub !== undefined) jwt.setSubject(opts.sub);
    if (opts.aud !== undefined) jwt.setAudience(opts.aud);
    jwt.setProtectedHeader({ alg: this.alg, typ: 'JWT', kid: opts.kid ?? key.kid, ...opts.header });
    return jwt.sign(key.privateKey);
  }

  /**
   * A new key with a new kid signs from now on and the old public key leaves the
   * JWKS at once: the gateway then sees a kid it has never cached, which is the case
   * its JWKS refetch (and refetch rate limit) must handle.
   */
  async rotate(): Promise<void> {
    this.#key = await generateSigningKey(this.issuer, this.alg);
  }

  exportPrivate(): PrivateJwk {
    return { ...this.#key.privateJwk };
  }
}

export async function createIssuer(opts: { issuer: string; alg?: IssuerAlg; kid?: string }): Promise<Issuer> {
  return Issuer.create(opts);
}

const DEV_ISSUER = 'ztgw-dev';
const PRIVATE_FILE = 'private.jwk.json';
const JWKS_FILE = 'jwks.json';

/**
 * The demo's issuer, kept in `dir` so tokens minted by one command verify in a
 * gateway started by another. A private file that exists but cannot be read as a key
 * is an error, never silently replaced: it may be someone's only copy.
 */
export async function loadOrCreateDevIssuer(dir: string): Promise<Issuer> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privatePath = join(dir, PRIVATE_FILE);

  let issuer: Issuer;
  const saved = await readIfExists(privatePath);
  if (saved !== undefined) {
    try {
      issuer = await Issuer.fromPrivate(JSON.parse(saved) as PrivateJwk, { issuer: DEV_ISSUER });
    } catch (err) {
      throw new Error(`cannot load dev issuer key from ${privatePath}; delete it to create a new one`, { cause: err });
    }
  } else {
    issuer = await Issuer.create({ issuer: DEV_ISSUER, alg: 'ES256' });
    // Written aside, then link()ed into place: link fails if the name exists, so of
    // two processes starting at once exactly one key wins, and the loser never reads
    // a half-written file.
    const tmp = `${privatePath}.${randomUUID()}.tmp`;
    await writeFile(tmp, JSON.stringify(issuer.exportPrivate(), null, 2) + '\n', { mode: 0o600, flag: 'wx' });
    try {
      await link(tmp, privatePath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      return loadOrCreateDevIssuer(dir);
    } finally {
      await unlink(tmp);
    }
  }
  // The mode given to writeFile only applies on creation and is masked by umask.
  await chmod(privatePath, 0o600);

  // Rewritten every time so it always matches the private key, via rename so a
  // gateway reading it never sees half a file.
  const jwksPath = join(dir, JWKS_FILE);
  const tmp = `${jwksPath}.${randomUUID()}.tmp`;
  await writeFile(tmp, JSON.stringify(issuer.publicJwks(), null, 2) + '\n', { mode: 0o644 });
  await rename(tmp, jwksPath);
  return issuer;
}

async function generateSigningKey(issuer: string, alg: IssuerAlg, kid?: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const pub = await exportJWK(publicKey);
  // RFC 7638 thumbprint: a fresh key always gets a fresh kid, so rotate() cannot
  // collide with a kid the gateway has cached.
  const id = kid ?? (await calculateJwkThumbprint(pub));
  const privateJwk = { ...(await exportJWK(privateKey)), kid: id, alg, use: 'sig', iss: issuer } as PrivateJwk;
  return { kid: id, privateKey, privateJwk, publicJwk: publicPart(privateJwk) };
}

function publicPart(jwk: PrivateJwk): JWK {
  const pub: Record<string, unknown> = { ...jwk };
  for (const m of PRIVATE_MEMBERS) delete pub[m];
  delete pub.iss;
  delete pub.key_ops;
  delete pub.ext;
  return pub as JWK;
}

// jose reads a number as an absolute NumericDate; here a number means "seconds from
// now", which is what a parameter named expiresIn promises.
function relative(v: string | number): string | number {
  return typeof v === 'number' ? Math.floor(Date.now() / 1000) + v : v;
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function assertAlg(alg: unknown): asserts alg is IssuerAlg {
  if (!ALGS.includes(alg as IssuerAlg)) throw new TypeError(`unsupported issuer alg ${String(alg)}; use one of ${ALGS.join(', ')}`);
}
