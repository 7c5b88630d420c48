// Device trust end to end, against peers this project did not write: oidc-provider issues
// DPoP-bound and certificate-bound JWT access tokens from its own JWKS, the `dpop` package
// makes RFC 9449 proofs, certificates come from openssl. Every refusal also checks that
// the upstream saw nothing.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID, createHash } from 'node:crypto';
import { generateKeyPair as dpopKeyPair, generateProof } from 'dpop';
import { createRemoteJWKSet, exportJWK, generateKeyPair, jwtVerify, SignJWT, type JWK } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createRedisRegistry } from '../../src/identity/devices/redis-store.ts';
import { Redis } from 'ioredis';
import { startOidcProvider, type OidcProvider } from '../helpers/oidc.ts';
import { createDeviceCa, createServerCert, type DeviceCa } from '../helpers/certs.ts';
import { startRedis } from '../helpers/redis.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

type KeyPair = Awaited<ReturnType<typeof dpopKeyPair>>;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let oidc: OidcProvider;
let dir: string;

const issuerConfig = () => ({ name: 'idp', issuer: oidc.issuer, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: oidc.jwksUrl });

const routes = [
  { name: 'bound', pathPrefix: '/bound/', upstream: '', device: { binding: 'required' } },
  { name: 'trusted', pathPrefix: '/trusted/', upstream: '', device: { binding: 'required', requireEnrolled: true } },
  { name: 'open', pathPrefix: '/open/', upstream: '', device: { binding: 'optional' } },
];

function gatewayConfig(extra: Record<string, unknown> = {}) {
  return {
    server: { stripHeaders: ['x-employee-id'] },
    identity: { issuers: [issuerConfig()] },
    routes: routes.map((r) => ({ ...r, upstream: echo.url })),
    devices: { registry: { file: join(dir, 'devices.yaml') } },
    ...extra,
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-device-'));
  echo = await startEchoServer();
  oidc = await startOidcProvider();
});
afterAll(async () => {
  await oidc?.close();
  await echo?.close();
});
beforeEach(() => {
  echo.requests.length = 0;
});

const thumbprint = async (keyPair: KeyPair) => {
  const { kty, crv, x, y } = (await exportJWK(keyPair.publicKey)) as JWK;
  return createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
};

async function dpopCall(gw: TestGateway, path: string, token: string, keyPair: KeyPair, opts: { proof?: string | null; method?: string; headers?: Record<string, string>; nonce?: string } = {}) {
  const method = opts.method ?? 'GET';
  const proof = opts.proof === undefined ? await generateProof(keyPair, gw.url + path, method, opts.nonce, token) : opts.proof;
  const headers: Record<string, string> = { authorization: `DPoP ${token}`, ...opts.headers };
  if (proof !== null) headers.dpop = proof;
  return rawRequest(gw.url, path, { method, headers });
}

function expectRefused(res: Awaited<ReturnType<typeof rawRequest>>, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.json().code).toBe(code);
  expect(echo.requests).toHaveLength(0);
}

describe('DPoP-bound tokens (RFC 9449)', () => {
  let gw: TestGateway;
  let device: KeyPair;
  let token: string;

  beforeAll(async () => {
    gw = await startTestGateway(gatewayConfig());
    device = await dpopKeyPair('ES256');
    token = await oidc.dpopBoundToken(device, { sub: 'alice' });
  });
  afterAll(() => gw?.close());

  it('accepts a bound token with a fresh proof, and asserts the device to the upstream', async () => {
    const res = await dpopCall(gw, '/bound/x', token, device);
    expect(res.status).toBe(200);
    const seen = res.json().headers;
    expect(seen.authorization).toBeUndefined();
    expect(seen.dpop).toBeUndefined();
    const jwks = createRemoteJWKSet(new URL(`${gw.url}/.well-known/zt-jwks.json`));
    const { payload } = await jwtVerify(seen['x-zt-assertion'], jwks, { issuer: 'zt-gateway', audience: 'bound' });
    expect(payload.sub).toBe('alice');
    expect(payload.dev).toMatchObject({ id: await thumbprint(device), bind: 'dpop', enrolled: false });
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(60);
  });

  it('verifies a proof on every request: each needs a new jti', async () => {
    const proof = await generateProof(device, `${gw.url}/bound/again`, 'GET', undefined, token);
    expect((await dpopCall(gw, '/bound/again', token, device, { proof })).status).toBe(200);
    echo.requests.length = 0;
    const replay = await dpopCall(gw, '/bound/again', token, device, { proof });
    expectRefused(replay, 401, 'ERR_INVALID_DPOP_PROOF');
    expect(replay.headers['www-authenticate']).toMatch(/^DPoP .*error="invalid_dpop_proof"/);
  });

  it('refuses a bound token without a proof', async () => {
    expectRefused(await dpopCall(gw, '/bound/x', token, device, { proof: null }), 401, 'ERR_INVALID_DPOP_PROOF');
  });

  it('refuses a bound token presented with the Bearer scheme', async () => {
    const proof = await generateProof(device, `${gw.url}/bound/x`, 'GET', undefined, token);
    const res = await rawRequest(gw.url, '/bound/x', { headers: { authorization: `Bearer ${token}`, dpop: proof } });
    expectRefused(res, 401, 'ERR_INVALID_TOKEN');
  });

  it('refuses a token bound to device A used with device B’s key', async () => {
    const thief = await dpopKeyPair('ES256');
    expectRefused(await dpopCall(gw, '/bound/x', token, thief), 401, 'ERR_INVALID_DPOP_PROOF');
  });

  it('refuses a proof for another method or another URL', async () => {
    const wrongMethod = await generateProof(device, `${gw.url}/bound/x`, 'POST', undefined, token);
    expectRefused(await dpopCall(gw, '/bound/x', token, device, { proof: wrongMethod }), 401, 'ERR_INVALID_DPOP_PROOF');
    const wrongUrl = await generateProof(device, `${gw.url}/bound/other`, 'GET', undefined, token);
    expectRefused(await dpopCall(gw, '/bound/x', token, device, { proof: wrongUrl }), 401, 'ERR_INVALID_DPOP_PROOF');
  });

  it('refuses a proof made for another access token (ath)', async () => {
    const other = await oidc.dpopBoundToken(device, { sub: 'alice' });
    const proof = await generateProof(device, `${gw.url}/bound/x`, 'GET', undefined, other);
    expectRefused(await dpopCall(gw, '/bound/x', token, device, { proof }), 401, 'ERR_INVALID_DPOP_PROOF');
  });

  describe('malformed proofs', () => {
    let extractable: CryptoKeyPair;
    let boundToExtractable: string;
    beforeAll(async () => {
      extractable = await generateKeyPair('ES256', { extractable: true });
      boundToExtractable = await oidc.dpopBoundToken(extractable as KeyPair, { sub: 'alice' });
    });

    async function handMade(change: { header?: Record<string, unknown>; claims?: Record<string, unknown>; key?: CryptoKey }) {
      const publicJwk = await exportJWK(extractable.publicKey);
      const ath = createHash('sha256').update(boundToExtractable).digest('base64url');
      return new SignJWT({ htm: 'GET', htu: `${gw.url}/bound/x`, iat: Math.floor(Date.now() / 1000), jti: randomUUID(), ath, ...change.claims })
        .setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk: publicJwk, ...change.header } as never)
        .sign(change.key ?? extractable.privateKey);
    }

    const cases: [string, () => Promise<{ header?: Record<string, unknown>; claims?: Record<string, unknown>; key?: CryptoKey }>][] = [
      ['a wrong typ', async () => ({ header: { typ: 'JWT' } })],
      ['an iat too old', async () => ({ claims: { iat: Math.floor(Date.now() / 1000) - 600 } })],
      ['an iat in the future', async () => ({ claims: { iat: Math.floor(Date.now() / 1000) + 600 } })],
      ['no jti', async () => ({ claims: { jti: undefined } })],
      ['a private key in the jwk header', async () => ({ header: { jwk: await exportJWK(extractable.privateKey) } })],
      ['a signature by another key', async () => ({ key: (await generateKeyPair('ES256')).privateKey })],
    ];
    for (const [what, change] of cases) {
      it(`refuses a proof with ${what}`, async () => {
        const proof = await handMade(await change());
        expectRefused(await dpopCall(gw, '/bound/x', boundToExtractable, extractable as KeyPair, { proof }), 401, 'ERR_INVALID_DPOP_PROOF');
      });
    }

    it('accepts the hand-made proof when nothing is wrong with it (the cases above fail for their one change)', async () => {
      const proof = await handMade({});
      expect((await dpopCall(gw, '/bound/x', boundToExtractable, extractable as KeyPair, { proof })).status).toBe(200);
    });

    it('refuses an HMAC-signed proof (asymmetric algorithms only)', async () => {
      const publicJwk = await exportJWK(extractable.publicKey);
      const proof = await new SignJWT({ htm: 'GET', htu: `${gw.url}/bound/x`, iat: Math.floor(Date.now() / 1000), jti: randomUUID() })
        .setProtectedHeader({ typ: 'dpop+jwt', alg: 'HS256', jwk: publicJwk } as never)
        .sign(new TextEncoder().encode('x'.repeat(32)));
      expectRefused(await dpopCall(gw, '/bound/x', boundToExtractable, extractable as KeyPair, { proof }), 401, 'ERR_INVALID_DPOP_PROOF');
    });
  });

  it('refuses a plain bearer token on a route that requires a device', async () => {
    const bearer = await oidc.bearerToken({ sub: 'alice' });
    const res = await rawRequest(gw.url, '/bound/x', { headers: { authorization: `Bearer ${bearer}` } });
    expectRefused(res, 401, 'ERR_DEVICE_BINDING_REQUIRED');
    expect(res.headers['www-authenticate']).toMatch(/^DPoP /);
  });

  it('lets a plain bearer token through where binding is optional, as an unbound device', async () => {
    const bearer = await oidc.bearerToken({ sub: 'alice' });
    const res = await rawRequest(gw.url, '/open/x', { headers: { authorization: `Bearer ${bearer}` } });
    expect(res.status).toBe(200);
    const { payload } = await jwtVerify(res.json().headers['x-zt-assertion'], createRemoteJWKSet(new URL(`${gw.adminUrl}/.well-known/zt-jwks.json`)));
    expect(payload.sub).toBe('alice');
    expect(payload.dev).toBeUndefined(); // no device claim for an unbound token
  });

  it('never forwards identity headers a client made up', async () => {
    const res = await dpopCall(gw, '/bound/x', token, device, {
      headers: {
        'x-zt-user': 'root',
        'x-zt-assertion': 'forged',
        'x-user-id': 'root',
        'x-userinfo': 'root',
        'x-forwarded-user': 'root',
        'x-remote-user': 'root',
        'x-original-url': '/admin',
        'x-rewrite-url': '/admin',
        'x-employee-id': '1',
      },
    });
    expect(res.status).toBe(200);
    const seen = res.json().headers;
    for (const name of ['x-zt-user', 'x-user-id', 'x-userinfo', 'x-forwarded-user', 'x-remote-user', 'x-original-url', 'x-rewrite-url', 'x-employee-id']) {
      expect(seen[name], name).toBeUndefined();
    }
    expect(seen['x-zt-assertion']).not.toBe('forged');
  });
});

describe('DPoP server nonces', () => {
  it('asks for a nonce with use_dpop_nonce and a DPoP-Nonce header, then accepts it', async () => {
    const gw = await startTestGateway(gatewayConfig({ identity: { issuers: [issuerConfig()], dpop: { nonce: { secret: 'n'.repeat(40) } } } }));
    try {
      const device = await dpopKeyPair('ES256');
      const token = await oidc.dpopBoundToken(device, { sub: 'alice' });
      const first = await dpopCall(gw, '/bound/x', token, device);
      expectRefused(first, 401, 'ERR_USE_DPOP_NONCE');
      expect(first.headers['www-authenticate']).toMatch(/error="use_dpop_nonce"/);
      const nonce = String(first.headers['dpop-nonce']);
      expect(nonce.length).toBeGreaterThan(10);
      expect((await dpopCall(gw, '/bound/x', token, device, { nonce })).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('the device registry', () => {
  let gw: TestGateway;
  let device: KeyPair;
  let token: string;
  let fp: string;
  const devicesFile = () => join(dir, 'registry-devices.yaml');

  function writeDevices(entries: Record<string, unknown>[]) {
    writeFileSync(devicesFile(), JSON.stringify({ devices: entries }));
  }
  const posture = (lastCheckIn = new Date().toISOString()) => ({ managed: true, diskEncrypted: true, os: 'macOS', osVersion: '15.1', lastCheckIn, trustLevel: 'high' });

  beforeAll(async () => {
    device = await dpopKeyPair('ES256');
    token = await oidc.dpopBoundToken(device, { sub: 'alice' });
    fp = await thumbprint(device);
    writeDevices([]);
    gw = await startTestGateway({ ...gatewayConfig(), devices: { registry: { file: devicesFile() } } });
  });
  afterAll(() => gw?.close());

  async function eventually(check: () => Promise<boolean>, ms = 2000) {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (await check()) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  }
  const trustedStatus = async () => (await dpopCall(gw, '/trusted/x', token, device)).status;

  it('refuses an unknown device where enrollment is required', async () => {
    expectRefused(await dpopCall(gw, '/trusted/x', token, device), 403, 'ERR_DEVICE_NOT_TRUSTED');
  });

  it('accepts it once enrolled to the token subject, with its posture in the assertion', async () => {
    writeDevices([{ id: fp, owner: 'alice', posture: posture(), enrolledAt: new Date().toISOString() }]);
    expect(await eventually(async () => (await trustedStatus()) === 200)).toBe(true);
    const res = await dpopCall(gw, '/trusted/x', token, device);
    const { payload } = await jwtVerify(res.json().headers['x-zt-assertion'], createRemoteJWKSet(new URL(`${gw.url}/.well-known/zt-jwks.json`)));
    expect(payload.dev).toMatchObject({ id: fp, enrolled: true, owner_match: true, stale: false, posture: { managed: true, disk_encrypted: true, os: 'macOS', trust: 'high' } });
  });

  it('refuses a device enrolled to someone else', async () => {
    writeDevices([{ id: fp, owner: 'bob', posture: posture(), enrolledAt: new Date().toISOString() }]);
    expect(await eventually(async () => (await trustedStatus()) === 403)).toBe(true);
  });

  it('refuses a stale device (no check-in for longer than devices.staleAfterS)', async () => {
    writeDevices([{ id: fp, owner: 'alice', posture: posture(new Date(Date.now() - 30 * 24 * 3600_000).toISOString()), enrolledAt: new Date().toISOString() }]);
    expect(await eventually(async () => (await trustedStatus()) === 403)).toBe(true);
  });

  it('refuses a revoked device on every route, even where enrollment is optional', async () => {
    writeDevices([{ id: fp, owner: 'alice', posture: posture(), enrolledAt: new Date().toISOString(), revokedAt: new Date().toISOString() }]);
    expect(await eventually(async () => (await dpopCall(gw, '/bound/x', token, device)).status === 403)).toBe(true);
    echo.requests.length = 0;
    expectRefused(await dpopCall(gw, '/open/x', token, device), 403, 'ERR_DEVICE_REVOKED');
  });
});

describe('a fleet sharing Redis', () => {
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let a: TestGateway;
  let b: TestGateway;
  let device: KeyPair;
  let token: string;

  beforeAll(async () => {
    redis = await startRedis();
    const shared = { redis: { url: redis.url }, devices: { registry: { redis: true }, cacheTtlMs: 500 } };
    // Both instances serve fleet.test (a route naming the host makes it an origin they answer for).
    const fleet = { routes: [...gatewayConfig().routes, { name: 'fleet', pathPrefix: '/fleet/', upstream: echo.url, hosts: ['fleet.test'] }] };
    a = await startTestGateway({ ...gatewayConfig(), ...shared, ...fleet });
    b = await startTestGateway({ ...gatewayConfig(), ...shared, ...fleet });
    device = await dpopKeyPair('ES256');
    token = await oidc.dpopBoundToken(device, { sub: 'alice' });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await redis?.stop();
  });

  it('refuses a proof replayed to a second instance', async () => {
    // Both instances serve the origin http://fleet.test, so only the shared jti store can tell the replay.
    const proof = await generateProof(device, 'http://fleet.test/bound/x', 'GET', undefined, token);
    const headers = { authorization: `DPoP ${token}`, dpop: proof, host: 'fleet.test' };
    expect((await rawRequest(a.url, '/bound/x', { headers })).status).toBe(200);
    echo.requests.length = 0;
    const res = await rawRequest(b.url, '/bound/x', { headers });
    expectRefused(res, 401, 'ERR_INVALID_DPOP_PROOF');
    expect(b.logs.some((l) => l.msg === 'access' && l.code === 'ERR_INVALID_DPOP_PROOF')).toBe(true);
  });

  it('refuses a revoked device on every instance within one second', async () => {
    const client = new Redis(redis.url);
    const admin = createRedisRegistry({ redis: client });
    try {
      const fp = await thumbprint(device);
      await admin.enroll({ id: fp, owner: 'alice', posture: { managed: true, diskEncrypted: true, os: 'linux', osVersion: '6', lastCheckIn: new Date().toISOString(), trustLevel: 'high' } });
      for (const gw of [a, b]) expect((await dpopCall(gw, '/trusted/x', token, device)).status).toBe(200);
      await admin.revoke(fp);
      const revokedAt = Date.now();
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() - revokedAt)));
      echo.requests.length = 0;
      for (const gw of [a, b]) expectRefused(await dpopCall(gw, '/trusted/x', token, device), 403, 'ERR_DEVICE_REVOKED');
    } finally {
      await admin.close();
      client.disconnect();
    }
  });

  it('fails closed when Redis is down: 503, never a pass', async () => {
    const down = await startRedis();
    const gw = await startTestGateway({ ...gatewayConfig(), redis: { url: down.url, commandTimeoutMs: 200 }, devices: { registry: { redis: true } } });
    try {
      await down.stop();
      const res = await dpopCall(gw, '/bound/x', token, device);
      expectRefused(res, 503, 'ERR_DEPENDENCY_UNAVAILABLE');
      expect((await rawRequest(gw.adminUrl, '/readyz')).json().checks).toContainEqual(expect.objectContaining({ name: 'redis', ok: false }));
    } finally {
      await gw.close();
    }
  });
});

describe('certificate-bound tokens (mTLS, RFC 8705)', () => {
  let gw: TestGateway;
  let deviceCa: DeviceCa;
  let laptop: ReturnType<DeviceCa['issue']>;
  let serverCa: DeviceCa;

  beforeAll(async () => {
    deviceCa = createDeviceCa('device CA');
    serverCa = createDeviceCa('server CA');
    const serverCert = createServerCert(serverCa, ['127.0.0.1']);
    writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
    writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
    writeFileSync(join(dir, 'device-ca.crt'), deviceCa.caCertPem);
    laptop = deviceCa.issue('laptop-1');
    gw = await startTestGateway(
      gatewayConfig({ server: { tls: { certFile: 'server.crt', keyFile: 'server.key', clientCaFile: 'device-ca.crt' } } }),
      { dir },
    );
  });
  afterAll(() => gw?.close());

  const call = (token: string, cert?: { certPem: string; keyPem: string }) =>
    rawRequest(gw.url, '/bound/x', {
      headers: { authorization: `Bearer ${token}` },
      tls: { ca: serverCa.caCertPem, ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}) },
    });

  it('accepts a certificate-bound token with its certificate', async () => {
    const token = await oidc.certBoundToken(laptop.certPem, laptop.keyPem, { sub: 'alice' });
    const res = await call(token, laptop);
    expect(res.status).toBe(200);
    const { payload } = await jwtVerify(res.json().headers['x-zt-assertion'], createRemoteJWKSet(new URL(`${gw.adminUrl}/.well-known/zt-jwks.json`)));
    expect(payload.dev).toMatchObject({ id: laptop.thumbprint, bind: 'mtls' });
  });

  it('refuses it without a certificate', async () => {
    const token = await oidc.certBoundToken(laptop.certPem, laptop.keyPem, { sub: 'alice' });
    expectRefused(await call(token), 401, 'ERR_CERTIFICATE_MISMATCH');
  });

  it('refuses it with another device’s certificate', async () => {
    const token = await oidc.certBoundToken(laptop.certPem, laptop.keyPem, { sub: 'alice' });
    expectRefused(await call(token, deviceCa.issue('laptop-2')), 401, 'ERR_CERTIFICATE_MISMATCH');
  });

  it('refuses a certificate the device CA did not sign, even when the token names it', async () => {
    const rogue = createDeviceCa('rogue CA').issue('laptop-1');
    const token = await oidc.certBoundToken(rogue.certPem, rogue.keyPem, { sub: 'alice' });
    expectRefused(await call(token, rogue), 401, 'ERR_UNTRUSTED_CERTIFICATE');
  });
});

describe('assertion signing keys', () => {
  it('signs with the first configured key and publishes all of them (rotation with overlap)', async () => {
    const keys = await Promise.all(
      ['new', 'old'].map(async (kid) => {
        const { privateKey } = await generateKeyPair('ES256', { extractable: true });
        const file = join(dir, `${kid}.jwk.json`);
        writeFileSync(file, JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: 'ES256' }));
        return file;
      }),
    );
    const gw = await startTestGateway(gatewayConfig({ assertion: { signingKeys: keys } }));
    try {
      const jwks = (await rawRequest(gw.url, '/.well-known/zt-jwks.json')).json();
      expect(jwks.keys.map((k: JWK) => k.kid)).toEqual(['new', 'old']);
      expect(jwks.keys.every((k: JWK) => k.d === undefined)).toBe(true);
      const bearer = await oidc.bearerToken({ sub: 'alice' });
      const res = await rawRequest(gw.url, '/open/x', { headers: { authorization: `Bearer ${bearer}` } });
      const assertion = res.json().headers['x-zt-assertion'];
      expect(JSON.parse(Buffer.from(assertion.split('.')[0], 'base64url').toString()).kid).toBe('new');
    } finally {
      await gw.close();
    }
  });
});
