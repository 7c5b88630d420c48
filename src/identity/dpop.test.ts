import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import { calculateThumbprint, generateKeyPair as dpopKeyPair, generateProof, type KeyPair } from 'dpop';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  createDpopVerifier,
  DPOP_FAILURE_REASONS,
  DpopProofError,
  DpopReplayStoreError,
  normalizeHtu,
  singleDpopHeader,
  type DpopFailureReason,
  type DpopOptions,
  type DpopVerifyInput,
} from './dpop.ts';
import { createMemoryReplayCache, ReplayCacheUnavailableError, type ReplayCache } from './replay-cache.ts';

const T0 = 1_800_000_000_000; // ms; a whole number of 60 s nonce windows
const TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl-access-token';
const HTU = 'https://api.example.com/x';
const MAX_AGE_S = 60;
const SKEW_S = 5;

const enc = new TextEncoder();
const b64u = (v: Uint8Array | string): string => Buffer.from(typeof v === 'string' ? enc.encode(v) : v).toString('base64url');
const athOf = (token: string): string => createHash('sha256').update(token).digest('base64url');

interface Signer {
  alg: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
  privateJwk: JWK;
  jkt: string;
}

async function signer(alg: 'ES256' | 'EdDSA'): Promise<Signer> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = await exportJWK(publicKey);
  // jose's thumbprint, as an independent check of the verifier's own RFC 7638 code.
  return { alg, privateKey, publicJwk, privateJwk: await exportJWK(privateKey), jkt: await calculateJwkThumbprint(publicJwk) };
}

/** A proof built by hand, byte for byte, so that any one field can be wrong. */
async function handProof(
  s: Signer,
  opts: { header?: Record<string, unknown>; claims?: Record<string, unknown>; omit?: string[]; payload?: Uint8Array; signWith?: Signer } = {},
): Promise<string> {
  const header: Record<string, unknown> = { typ: 'dpop+jwt', alg: s.alg, jwk: s.publicJwk, ...opts.header };
  const claims: Record<string, unknown> = { htm: 'GET', htu: HTU, iat: T0 / 1000, jti: randomUUID(), ath: athOf(TOKEN), ...opts.claims };
  for (const k of opts.omit ?? []) delete claims[k];
  for (const k of Object.keys(header)) if (header[k] === undefined) delete header[k];
  const input = `${b64u(JSON.stringify(header))}.${b64u(opts.payload ?? enc.encode(JSON.stringify(claims)))}`;
  const by = opts.signWith ?? s;
  const algorithm = by.alg === 'ES256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'Ed25519' };
  const sig = new Uint8Array(await crypto.subtle.sign(algorithm, by.privateKey, enc.encode(input)));
  return `${input}.${b64u(sig)}`;
}

let es: Signer;
let ed: Signer;
let other: Signer;
beforeAll(async () => {
  [es, ed, other] = await Promise.all([signer('ES256'), signer('EdDSA'), signer('ES256')]);
});

function setup(overrides: Partial<DpopOptions> = {}) {
  const clock = { ms: T0 };
  const verifier = createDpopVerifier({
    algorithms: ['ES256', 'EdDSA', 'Ed25519', 'RS256', 'PS256'],
    maxAgeS: MAX_AGE_S,
    futureSkewS: SKEW_S,
    replay: createMemoryReplayCache({ maxEntries: 1000 }),
    now: () => clock.ms,
    ...overrides,
  });
  return { clock, verifier };
}

const input = (proof: string | undefined, over: Partial<DpopVerifyInput> = {}): DpopVerifyInput => ({
  proof,
  method: 'GET',
  htu: HTU,
  accessToken: TOKEN,
  expectedJkt: es.jkt,
  ...over,
});

const covered = new Set<DpopFailureReason>();

/** Asserts a DpopProofError with exactly this reason, and records that the reason has a test. */
async function expectReason(work: Promise<unknown> | (() => unknown), reason: DpopFailureReason): Promise<DpopProofError> {
  covered.add(reason);
  let err: unknown;
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(DpopProofError);
  expect((err as DpopProofError).reason).toBe(reason);
  return err as DpopProofError;
}

/** Proofs from the dpop package carry the real time as iat; the verifier's clock follows it. */
async function packageProof(clock: { ms: number }, kp: KeyPair, htu: string, htm: string, nonce?: string): Promise<string> {
  const proof = await generateProof(kp, htu, htm, nonce, TOKEN);
  clock.ms = (JSON.parse(Buffer.from(proof.split('.')[1]!, 'base64url').toString()) as { iat: number }).iat * 1000;
  return proof;
}

describe('createDpopVerifier options', () => {
  it.each([['HS256'], ['HS384'], ['HS512'], ['none'], ['ES256K'], ['']])('refuses algorithm %j at creation', (alg) => {
    expect(() => setup({ algorithms: ['ES256', alg] })).toThrow(/asymmetric/);
  });

  it('refuses an empty allow-list, a non-positive window and a short nonce secret', () => {
    expect(() => setup({ algorithms: [] })).toThrow();
    expect(() => setup({ maxAgeS: 0 })).toThrow();
    expect(() => setup({ futureSkewS: -1 })).toThrow();
    expect(() => setup({ nonce: { secret: new Uint8Array(16), windowS: 60 } })).toThrow(/32 bytes/);
    expect(() => setup({ nonce: { secret: new Uint8Array(32), windowS: 0 } })).toThrow();
  });

  it('remembers a jti for the whole iat window, plus a clock margin', () => {
    expect(setup().verifier.replayTtlMs).toBe((MAX_AGE_S + SKEW_S) * 1000 + 1000);
  });
});

describe('DPoP proofs that verify', () => {
  it('ES256 proof from the dpop client library', async () => {
    const { clock, verifier } = setup();
    const kp = await dpopKeyPair('ES256', { extractable: true });
    const jkt = await calculateThumbprint(kp.publicKey);
    const proof = await packageProof(clock, kp, HTU, 'GET');
    const result = await verifier.verify(input(proof, { expectedJkt: jkt }));
    expect(result.jkt).toBe(jkt);
    expect(result.jti).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('Ed25519 proof from the dpop client library', async () => {
    const { clock, verifier } = setup();
    const kp = await dpopKeyPair('Ed25519', { extractable: true });
    const jkt = await calculateThumbprint(kp.publicKey);
    const proof = await packageProof(clock, kp, HTU, 'POST');
    await expect(verifier.verify(input(proof, { method: 'POST', expectedJkt: jkt }))).resolves.toMatchObject({ jkt });
  });

  it('EdDSA proof (the polymorphic alg name)', async () => {
    const { verifier } = setup();
    const proof = await handProof(ed);
    await expect(verifier.verify(input(proof, { expectedJkt: ed.jkt }))).resolves.toMatchObject({ jkt: ed.jkt });
  });

  it.each([['RS256'], ['PS256']] as const)('%s proof from the dpop client library', async (alg) => {
    const { clock, verifier } = setup();
    const kp = await dpopKeyPair(alg, { extractable: true });
    const jkt = await calculateThumbprint(kp.publicKey);
    const proof = await packageProof(clock, kp, HTU, 'GET');
    await expect(verifier.verify(input(proof, { expectedJkt: jkt }))).resolves.toMatchObject({ jkt });
  });

  it('verifies many proofs from one key (the imported key is reused)', async () => {
    const { verifier } = setup();
    for (let i = 0; i < 5; i++) await expect(verifier.verify(input(await handProof(es)))).resolves.toMatchObject({ jkt: es.jkt });
  });

  it('accepts iat at both edges of the window', async () => {
    const { verifier } = setup();
    await expect(verifier.verify(input(await handProof(es, { claims: { iat: T0 / 1000 - MAX_AGE_S } })))).resolves.toBeDefined();
    await expect(verifier.verify(input(await handProof(es, { claims: { iat: T0 / 1000 + SKEW_S } })))).resolves.toBeDefined();
  });

  it('scopes jti by key: the same jti from two keys is not a replay', async () => {
    const { verifier } = setup();
    await verifier.verify(input(await handProof(es, { claims: { jti: 'same' } })));
    await expect(verifier.verify(input(await handProof(other, { claims: { jti: 'same' } }), { expectedJkt: other.jkt }))).resolves.toBeDefined();
  });

  it.each([
    ['HTTPS://API.example.com:443/x', 'https://api.example.com/x'],
    ['https://api.example.com/x', 'HTTPS://API.EXAMPLE.COM:443/x'],
    ['http://api.example.com:80/x', 'http://api.example.com/x'],
    ['https://api.example.com:8443/x', 'https://api.example.com:8443/x'],
    ['https://api.example.com/%7euser/a%2fb', 'https://api.example.com/~user/a%2Fb'],
    ['https://api.example.com/a/./b/../x', 'https://api.example.com/a/x'],
    ['https://api.example.com', 'https://api.example.com/'],
    ['https://api.example.com/x?q=1#frag', 'https://api.example.com/x'],
    ['https://[::1]:443/x', 'https://[0:0:0:0:0:0:0:1]/x'],
  ])('htu %s matches request URI %s after normalisation', async (proofHtu, requestHtu) => {
    const { verifier } = setup();
    const proof = await handProof(es, { claims: { htu: proofHtu } });
    await expect(verifier.verify(input(proof, { htu: requestHtu }))).resolves.toBeDefined();
  });
});

describe('DPoP proofs that are refused, one reason each', () => {
  it('missing: no DPoP header', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(undefined)), 'missing');
  });

  it('multiple: more than one DPoP header', async () => {
    const proof = await handProof(es);
    await expectReason(() => singleDpopHeader(['Host', 'a', 'DPoP', proof, 'dpop', proof]), 'multiple');
    await expectReason(() => singleDpopHeader({ dpop: `${proof}, ${proof}` }), 'multiple');
    await expectReason(() => singleDpopHeader({ dpop: [proof, proof] } as never), 'multiple');
    expect(singleDpopHeader(['Host', 'a', 'DPoP', proof])).toBe(proof);
    expect(singleDpopHeader({ dpop: proof })).toBe(proof);
    expect(singleDpopHeader(['Host', 'a'])).toBeUndefined();
    expect(singleDpopHeader({})).toBeUndefined();
  });

  it('malformed: not a JWS, undecodable header, extensions, non-JSON or non-object payload', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input('')), 'malformed');
    await expectReason(verifier.verify(input('not-a-jwt')), 'malformed');
    await expectReason(verifier.verify(input('a.b.c.d.e')), 'malformed');
    await expectReason(verifier.verify(input(`${b64u('{"typ":')}.${b64u('{}')}.sig`)), 'malformed');
    await expectReason(verifier.verify(input(`${'a'.repeat(9000)}.b.c`)), 'malformed');
    await expectReason(verifier.verify(input(await handProof(es, { header: { crit: ['exp'], exp: 1 } }))), 'malformed');
    await expectReason(verifier.verify(input(await handProof(es, { header: { b64: false } }))), 'malformed');
    await expectReason(verifier.verify(input(await handProof(es, { payload: enc.encode('not json') }))), 'malformed');
    await expectReason(verifier.verify(input(await handProof(es, { payload: enc.encode('[1,2]') }))), 'malformed');
  });

  it('typ: anything but exactly "dpop+jwt"', async () => {
    const { verifier } = setup();
    for (const typ of ['JWT', 'application/dpop+jwt', 'DPOP+JWT', undefined]) {
      await expectReason(verifier.verify(input(await handProof(es, { header: { typ } }))), 'typ');
    }
  });

  it('alg: none, HS256, or an asymmetric alg not on the allow-list', async () => {
    const { verifier } = setup({ algorithms: ['ES256'] });
    const claims = { htm: 'GET', htu: HTU, iat: T0 / 1000, jti: randomUUID(), ath: athOf(TOKEN) };
    const unsecured = `${b64u(JSON.stringify({ typ: 'dpop+jwt', alg: 'none', jwk: es.publicJwk }))}.${b64u(JSON.stringify(claims))}.`;
    await expectReason(verifier.verify(input(unsecured)), 'alg');
    // HS256 "signed" with the public key's x as the HMAC secret: the classic confusion attack.
    const hsInput = `${b64u(JSON.stringify({ typ: 'dpop+jwt', alg: 'HS256', jwk: es.publicJwk }))}.${b64u(JSON.stringify(claims))}`;
    const hs = `${hsInput}.${createHmac('sha256', es.publicJwk.x!).update(hsInput).digest('base64url')}`;
    await expectReason(verifier.verify(input(hs)), 'alg');
    await expectReason(verifier.verify(input(await handProof(ed), { expectedJkt: ed.jkt })), 'alg');
    await expectReason(verifier.verify(input(await handProof(es, { header: { alg: undefined } }))), 'alg');
  });

  it('jwk: absent, not an object, or not a key usable with the alg', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: undefined } }))), 'jwk');
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: 'abc' } }))), 'jwk');
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: { ...es.publicJwk, use: 'enc' } } }))), 'jwk');
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: { ...es.publicJwk, alg: 'ES384' } } }))), 'jwk');
    // An Ed25519 key under "alg": "ES256".
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: ed.publicJwk } }), { expectedJkt: ed.jkt })), 'jwk');
    // Right shape, wrong point: not on the curve.
    const offCurve = { ...es.publicJwk, y: b64u(new Uint8Array(32).fill(7)) };
    const offJkt = await calculateJwkThumbprint(offCurve);
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: offCurve } }), { expectedJkt: offJkt })), 'jwk');
  });

  it('jwk_private: the header carries the private key', async () => {
    const { verifier } = setup();
    expect(es.privateJwk.d).toBeDefined();
    await expectReason(verifier.verify(input(await handProof(es, { header: { jwk: es.privateJwk } }))), 'jwk_private');
  });

  it('signature: not made by the key in the header', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(await handProof(es, { signWith: other }))), 'signature');
    const good = await handProof(es);
    const [h, , s] = good.split('.');
    const tampered = `${h}.${b64u(JSON.stringify({ htm: 'GET', htu: HTU, iat: T0 / 1000, jti: 'x', ath: athOf(TOKEN) }))}.${s}`;
    await expectReason(verifier.verify(input(tampered)), 'signature');
  });

  it('htm: another method (methods are case-sensitive)', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(await handProof(es, { claims: { htm: 'POST' } }))), 'htm');
    await expectReason(verifier.verify(input(await handProof(es, { claims: { htm: 'get' } }))), 'htm');
    await expectReason(verifier.verify(input(await handProof(es, { omit: ['htm'] }))), 'htm');
  });

  it('htu: another URI, or not an absolute http(s) URI', async () => {
    const { verifier } = setup();
    const cases: [string | undefined, string][] = [
      ['https://api.example.com/X', HTU], // path is case-sensitive
      ['https://api.example.com/y', HTU],
      ['http://api.example.com/x', HTU],
      ['https://evil.example.com/x', HTU],
      ['https://api.example.com:8443/x', HTU],
      ['https://api.example.com/a%2Fb', 'https://api.example.com/a/b'], // an encoded slash is not a slash
      ['https://user@api.example.com/x', HTU],
      ['wss://api.example.com/x', HTU],
      ['/x', HTU],
      [undefined, HTU],
    ];
    for (const [proofHtu, requestHtu] of cases) {
      const proof = await handProof(es, proofHtu === undefined ? { omit: ['htu'] } : { claims: { htu: proofHtu } });
      await expectReason(verifier.verify(input(proof, { htu: requestHtu })), 'htu');
    }
  });

  it('iat: too old, too far in the future, or not a number', async () => {
    const { verifier } = setup();
    for (const iat of [T0 / 1000 - MAX_AGE_S - 1, T0 / 1000 + SKEW_S + 1, String(T0 / 1000), undefined, null]) {
      const proof = await handProof(es, iat === undefined ? { omit: ['iat'] } : { claims: { iat } });
      await expectReason(verifier.verify(input(proof)), 'iat');
    }
  });

  it('jti: absent, empty, not a string, or longer than 256', async () => {
    const { verifier } = setup();
    for (const claims of [{ jti: '' }, { jti: 42 }, { jti: 'x'.repeat(257) }]) {
      await expectReason(verifier.verify(input(await handProof(es, { claims }))), 'jti');
    }
    await expectReason(verifier.verify(input(await handProof(es, { omit: ['jti'] }))), 'jti');
    await expect(verifier.verify(input(await handProof(es, { claims: { jti: 'x'.repeat(256) } })))).resolves.toBeDefined();
  });

  it('jti_replay: the same proof twice, even after a wait inside the window', async () => {
    const { clock, verifier } = setup();
    const proof = await handProof(es);
    await verifier.verify(input(proof));
    clock.ms += (MAX_AGE_S - 1) * 1000;
    await expectReason(verifier.verify(input(proof)), 'jti_replay');
  });

  it('ath: made for another access token, or without ath', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(await handProof(es, { claims: { ath: athOf('another-token') } }))), 'ath');
    await expectReason(verifier.verify(input(await handProof(es, { omit: ['ath'] }))), 'ath');
  });

  it('jkt_mismatch: a valid proof, but by a key the token is not bound to', async () => {
    const { verifier } = setup();
    await expectReason(verifier.verify(input(await handProof(other))), 'jkt_mismatch');
  });

  it('nonce_missing: the server requires a nonce and the proof has none → use_dpop_nonce', async () => {
    const { verifier } = setup({ nonce: { secret: randomBytes(32), windowS: 60 } });
    const err = await expectReason(verifier.verify(input(await handProof(es))), 'nonce_missing');
    expect(err.kind).toBe('use_dpop_nonce');
  });

  it('nonce: stale (two windows old), forged or malformed → use_dpop_nonce', async () => {
    const { clock, verifier } = setup({ nonce: { secret: randomBytes(32), windowS: 60 } });
    clock.ms = T0 - 120_000;
    const stale = verifier.issueNonce();
    clock.ms = T0;
    const err = await expectReason(verifier.verify(input(await handProof(es, { claims: { nonce: stale } }))), 'nonce');
    expect(err.kind).toBe('use_dpop_nonce');
    const forged = createHmac('sha256', randomBytes(32)).update(String(T0 / 60_000)).digest('base64url');
    for (const nonce of [forged, '', 'abc', 42, `${verifier.issueNonce()}x`]) {
      await expectReason(verifier.verify(input(await handProof(es, { claims: { nonce } }))), 'nonce');
    }
  });

  it('every other rejection is invalid_dpop_proof', () => {
    for (const reason of DPOP_FAILURE_REASONS) {
      expect(new DpopProofError(reason).kind).toBe(reason.startsWith('nonce') ? 'use_dpop_nonce' : 'invalid_dpop_proof');
    }
  });

  it('never puts the token or the proof in an error message', async () => {
    const { verifier } = setup();
    const proof = await handProof(es, { signWith: other });
    const err = await expectReason(verifier.verify(input(proof)), 'signature');
    expect(err.message).not.toContain(TOKEN);
    expect(err.message).not.toContain(proof.split('.')[1]);
    expect(JSON.stringify({ ...err, message: err.message })).not.toContain(TOKEN);
  });

  it('has a test above for every reason', () => {
    expect([...covered].sort()).toEqual([...DPOP_FAILURE_REASONS].sort());
  });
});

describe('server nonces', () => {
  it('accepts the current and the previous window’s nonce', async () => {
    const { clock, verifier } = setup({ nonce: { secret: randomBytes(32), windowS: 60 } });
    const current = verifier.issueNonce();
    expect(current).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await expect(verifier.verify(input(await handProof(es, { claims: { nonce: current } })))).resolves.toBeDefined();
    clock.ms = T0 - 60_000;
    const previous = verifier.issueNonce();
    expect(previous).not.toBe(current);
    clock.ms = T0 + 59_999;
    await expect(verifier.verify(input(await handProof(es, { claims: { nonce: previous, iat: clock.ms / 1000 } })))).resolves.toBeDefined();
  });

  it('is stateless: another verifier with the same secret accepts it', async () => {
    const secret = randomBytes(32);
    const a = setup({ nonce: { secret, windowS: 60 } });
    const b = setup({ nonce: { secret, windowS: 60 } });
    const nonce = a.verifier.issueNonce();
    await expect(b.verifier.verify(input(await handProof(es, { claims: { nonce } })))).resolves.toBeDefined();
  });

  it('issues nothing when nonces are off, and ignores a nonce claim then', async () => {
    const { verifier } = setup();
    expect(verifier.noncesEnabled).toBe(false);
    expect(() => verifier.issueNonce()).toThrow(/no nonce secret/);
    await expect(verifier.verify(input(await handProof(es, { claims: { nonce: 'whatever' } })))).resolves.toBeDefined();
  });
});

describe('replay cache failure', () => {
  it('surfaces as DpopReplayStoreError (the caller fails closed), never as success', async () => {
    const down: ReplayCache = {
      checkAndRemember: () => Promise.reject(new ReplayCacheUnavailableError('timeout', 'no answer')),
    };
    const { verifier } = setup({ replay: down });
    const err = await verifier.verify(input(await handProof(es))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DpopReplayStoreError);
    expect((err as DpopReplayStoreError).cause).toBeInstanceOf(ReplayCacheUnavailableError);
  });

  it('uses a key scoped to the thumbprint and a ttl covering the iat window', async () => {
    const calls: [string, number][] = [];
    const spy: ReplayCache = {
      checkAndRemember: async (key, ttl) => {
        calls.push([key, ttl]);
        return true;
      },
    };
    const { verifier } = setup({ replay: spy });
    await verifier.verify(input(await handProof(es, { claims: { jti: 'j1' } })));
    expect(calls).toEqual([[`${es.jkt}:j1`, verifier.replayTtlMs]]);
  });

  it('does not record the jti of a proof refused for another reason', async () => {
    const calls: string[] = [];
    const spy: ReplayCache = {
      checkAndRemember: async (key) => {
        calls.push(key);
        return true;
      },
    };
    const { verifier } = setup({ replay: spy });
    await expectReason(verifier.verify(input(await handProof(es, { signWith: other }))), 'signature');
    expect(calls).toEqual([]);
  });
});

describe('normalizeHtu', () => {
  it.each([
    ['HTTPS://API.Example.COM:443/a', 'https://api.example.com/a'],
    ['http://h:80', 'http://h/'],
    ['http://h:8080/a?b#c', 'http://h:8080/a'],
    ['https://h/%7e%41%2f%2a', 'https://h/~A%2F%2A'],
    ['https://h/a/../../b', 'https://h/b'],
  ])('%s → %s', (from, to) => {
    expect(normalizeHtu(from)).toBe(to);
  });

  it.each([['/x'], ['ftp://h/x'], ['https://u:p@h/x'], ['not a url']])('%s → undefined', (from) => {
    expect(normalizeHtu(from)).toBeUndefined();
  });
});
