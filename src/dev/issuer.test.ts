import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createIssuer, Issuer, loadOrCreateDevIssuer, type IssuerAlg } from './issuer.ts';

const verifyWith = (jwks: ReturnType<Issuer['publicJwks']>, token: string, opts: { issuer?: string; audience?: string } = {}) =>
  jwtVerify(token, createLocalJWKSet(jwks), opts);

describe('createIssuer', () => {
  it.each<IssuerAlg>(['ES256', 'RS256', 'EdDSA'])('%s tokens verify against publicJwks()', async (alg) => {
    const iss = await createIssuer({ issuer: 'https://idp.test', alg });
    const token = await iss.sign({ groups: ['eng'] }, { sub: 'alice', aud: 'ztgw' });

    const { payload, protectedHeader } = await verifyWith(iss.publicJwks(), token, { issuer: 'https://idp.test', audience: 'ztgw' });
    expect(protectedHeader).toMatchObject({ alg, typ: 'JWT', kid: iss.kid });
    expect(payload).toMatchObject({ iss: 'https://idp.test', sub: 'alice', aud: 'ztgw', groups: ['eng'] });
    expect(payload.exp! - payload.iat!).toBe(300);
    expect(typeof payload.jti).toBe('string');
  });

  it('publishes only public key material', async () => {
    for (const alg of ['ES256', 'RS256', 'EdDSA'] as const) {
      const [jwk] = (await createIssuer({ issuer: 'i', alg })).publicJwks().keys;
      for (const m of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) expect(jwk).not.toHaveProperty(m);
      expect(jwk).not.toHaveProperty('iss');
      expect(jwk).toMatchObject({ alg, use: 'sig' });
    }
  });

  it('uses the kid it is given', async () => {
    const iss = await createIssuer({ issuer: 'i', kid: 'key-1' });
    expect(iss.publicJwks().keys[0]?.kid).toBe('key-1');
    expect(decodeProtectedHeader(await iss.sign({})).kid).toBe('key-1');
  });

  it('rejects an unsupported alg', async () => {
    await expect(createIssuer({ issuer: 'i', alg: 'HS256' as IssuerAlg })).rejects.toThrow(/unsupported issuer alg/);
  });

  it('issues expired and not-yet-valid tokens on request', async () => {
    const iss = await createIssuer({ issuer: 'i' });
    const jwks = iss.publicJwks();
    await expect(verifyWith(jwks, await iss.sign({}, { expiresIn: -60 }))).rejects.toBeInstanceOf(errors.JWTExpired);
    await expect(verifyWith(jwks, await iss.sign({}, { expiresIn: '1h ago' }))).rejects.toBeInstanceOf(errors.JWTExpired);
    const early = iss.sign({}, { notBefore: '10m' });
    await expect(verifyWith(jwks, await early)).rejects.toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'nbf' });
  });

  it('lets explicit claims override defaults and options override claims', async () => {
    const iss = await createIssuer({ issuer: 'good' });
    const jwks = iss.publicJwks();
    await expect(verifyWith(jwks, await iss.sign({ iss: 'evil' }), { issuer: 'good' })).rejects.toMatchObject({ claim: 'iss' });
    const { payload } = await verifyWith(jwks, await iss.sign({ sub: 'claim', exp: 4_000_000_000, jti: 'fixed' }, { sub: 'option' }));
    expect(payload).toMatchObject({ sub: 'option', exp: 4_000_000_000, jti: 'fixed' });
  });

  it('can put a foreign kid and extra members in the header', async () => {
    const iss = await createIssuer({ issuer: 'i' });
    const token = await iss.sign({}, { kid: 'nope', header: { typ: 'at+jwt', x5u: 'https://evil.test/k' } });
    expect(decodeProtectedHeader(token)).toMatchObject({ kid: 'nope', typ: 'at+jwt', x5u: 'https://evil.test/k' });
    await expect(verifyWith(iss.publicJwks(), token)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
  });

  it('rotate() switches to a new kid and drops the old public key', async () => {
    const iss = await createIssuer({ issuer: 'i' });
    const oldJwks = iss.publicJwks();
    const oldKid = iss.kid;
    const oldToken = await iss.sign({ n: 1 });

    await iss.rotate();
    const newJwks = iss.publicJwks();
    const newToken = await iss.sign({ n: 2 });

    expect(iss.kid).not.toBe(oldKid);
    expect(newJwks.keys.map((k) => k.kid)).toEqual([iss.kid]);
    expect(decodeProtectedHeader(newToken).kid).toBe(iss.kid);
    expect((await verifyWith(newJwks, newToken)).payload.n).toBe(2);
    // A gateway holding the old set has never seen the new kid, and the old key is gone.
    await expect(verifyWith(oldJwks, newToken)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    await expect(verifyWith(newJwks, oldToken)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
  });

  it('round-trips through exportPrivate()/fromPrivate()', async () => {
    for (const alg of ['ES256', 'RS256', 'EdDSA'] as const) {
      const a = await createIssuer({ issuer: 'persisted', alg });
      const saved = JSON.parse(JSON.stringify(a.exportPrivate()));
      const b = await Issuer.fromPrivate(saved);
      expect(b.issuer).toBe('persisted');
      expect(b.alg).toBe(alg);
      expect(b.kid).toBe(a.kid);
      expect(b.publicJwks()).toEqual(a.publicJwks());
      const { payload } = await verifyWith(a.publicJwks(), await b.sign({ ok: true }), { issuer: 'persisted' });
      expect(payload.ok).toBe(true);
    }
  });

  it('fromPrivate() refuses a public key', async () => {
    const a = await createIssuer({ issuer: 'i' });
    const pub = { ...a.publicJwks().keys[0], iss: 'i' };
    await expect(Issuer.fromPrivate(pub as never)).rejects.toThrow(/not a private key/);
  });
});

describe('loadOrCreateDevIssuer', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'ztgw-issuer-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('creates keys in a new directory, 0600 for the private key', async () => {
    const dir = join(root, 'nested', 'keys');
    const iss = await loadOrCreateDevIssuer(dir);
    expect(iss.issuer).toBe('ztgw-dev');
    expect(iss.alg).toBe('ES256');

    expect((await stat(join(dir, 'private.jwk.json'))).mode & 0o777).toBe(0o600);
    const priv = JSON.parse(await readFile(join(dir, 'private.jwk.json'), 'utf8'));
    expect(priv).toMatchObject({ kty: 'EC', crv: 'P-256', kid: iss.kid, alg: 'ES256' });
    expect(typeof priv.d).toBe('string');

    const jwks = JSON.parse(await readFile(join(dir, 'jwks.json'), 'utf8'));
    expect(jwks).toEqual(iss.publicJwks());
    await verifyWith(jwks, await iss.sign({}), { issuer: 'ztgw-dev' });
  });

  it('reuses the stored key on later runs', async () => {
    const first = await loadOrCreateDevIssuer(root);
    const privBefore = await readFile(join(root, 'private.jwk.json'), 'utf8');
    const second = await loadOrCreateDevIssuer(root);

    expect(second.kid).toBe(first.kid);
    expect(await readFile(join(root, 'private.jwk.json'), 'utf8')).toBe(privBefore);
    const token = await second.sign({}, { sub: 'bob' });
    const { payload } = await verifyWith(first.publicJwks(), token, { issuer: 'ztgw-dev' });
    expect(payload.sub).toBe('bob');
  });

  it('rewrites a missing jwks.json from the stored private key', async () => {
    const first = await loadOrCreateDevIssuer(root);
    await rm(join(root, 'jwks.json'));
    await loadOrCreateDevIssuer(root);
    expect(JSON.parse(await readFile(join(root, 'jwks.json'), 'utf8'))).toEqual(first.publicJwks());
  });

  it('refuses to overwrite a corrupt private key file', async () => {
    await writeFile(join(root, 'private.jwk.json'), '{not json', { mode: 0o600 });
    await expect(loadOrCreateDevIssuer(root)).rejects.toThrow(/cannot load dev issuer key/);
    expect(await readFile(join(root, 'private.jwk.json'), 'utf8')).toBe('{not json');
  });

  it('agrees with itself when two processes race to create the key', async () => {
    const [a, b] = await Promise.all([loadOrCreateDevIssuer(root), loadOrCreateDevIssuer(root)]);
    expect(a.kid).toBe(b.kid);
    const jwks = JSON.parse(await readFile(join(root, 'jwks.json'), 'utf8'));
    expect(jwks.keys[0].kid).toBe(a.kid);
  });
});
