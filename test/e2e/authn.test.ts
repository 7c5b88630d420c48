// Authentication against a real issuer: keys generated here, JWKS served over real HTTP,
// a real echo upstream that records whatever reaches it.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { exportSPKI, importJWK, SignJWT, base64url } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let other: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  other = await createIssuer({ issuer: 'https://evil.test.local/', alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    identity: {
      issuers: [
        {
          name: 'corp',
          issuer: ISS,
          audiences: [AUD],
          algorithms: ['ES256', 'RS256'],
          jwksUrl: jwks.url,
          jwksCooldownS: 0,
          clockToleranceS: 5,
        },
      ],
    },
    routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
  });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

async function call(token: string | undefined, headers: Record<string, string> = {}) {
  return rawRequest(gw.url, '/echo/me', { headers: token === undefined ? headers : { authorization: `Bearer ${token}`, ...headers } });
}

async function expectRefused(token: string | undefined, error: 'invalid_token' | null = 'invalid_token') {
  const res = await call(token);
  expect(res.status).toBe(401);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const challenge = String(res.headers['www-authenticate']);
  expect(challenge).toMatch(/^Bearer realm="zt-gateway"/);
  if (error) expect(challenge).toContain(`error="${error}"`);
  else expect(challenge).not.toContain('error=');
  expect(echo.requests).toHaveLength(0);
  return res;
}

describe('bearer authentication', () => {
  it('accepts a valid token and passes the request on', async () => {
    const res = await call(await idp.sign({ groups: ['eng'] }, { sub: 'alice', aud: AUD, expiresIn: '5m' }));
    expect(res.status).toBe(200);
    expect(res.json().url).toBe('/echo/me');
    expect(echo.requests).toHaveLength(1);
    expect(gw.logs.some((l) => l.msg === 'access' && l.sub === 'alice' && l.status === 200)).toBe(true);
  });

  it('asks for credentials when none are sent (no error code, RFC 6750 §3.1)', async () => {
    const res = await expectRefused(undefined, null);
    expect(res.json()).toMatchObject({ status: 401, code: 'ERR_MISSING_TOKEN' });
  });

  it('refuses a non-Bearer Authorization header', async () => {
    const res = await call(undefined, { authorization: 'Basic YWxpY2U6cHc=' });
    expect(res.status).toBe(401);
    expect(echo.requests).toHaveLength(0);
  });

  it('refuses a token for another audience', async () => {
    await expectRefused(await idp.sign({}, { sub: 'alice', aud: 'some-other-api', expiresIn: '5m' }));
  });

  it('refuses a token from an unknown issuer, even one with a valid signature of its own', async () => {
    await expectRefused(await other.sign({}, { sub: 'alice', aud: AUD, expiresIn: '5m' }));
  });

  it('refuses a token whose iss claim names our issuer but is signed by another key', async () => {
    const forged = await new SignJWT({ sub: 'alice', aud: AUD, iss: ISS })
      .setProtectedHeader({ alg: 'ES256', kid: idp.publicJwks().keys[0]!.kid })
      .setExpirationTime('5m')
      .sign((await importJWK(other.exportPrivate(), 'ES256')) as CryptoKey);
    const res = await expectRefused(forged);
    expect(res.text).not.toMatch(/signature/i); // the reason stays in the logs
  });

  it('refuses an expired token', async () => {
    await expectRefused(await idp.sign({ exp: Math.floor(Date.now() / 1000) - 60 }, { sub: 'alice', aud: AUD }));
  });

  it('refuses a token that is not valid yet', async () => {
    await expectRefused(await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m', notBefore: '5m' }));
  });

  it('refuses a token without exp', async () => {
    const noExp = await new SignJWT({ sub: 'alice', aud: AUD, iss: ISS })
      .setProtectedHeader({ alg: 'ES256', kid: idp.publicJwks().keys[0]!.kid })
      .sign((await importJWK(idp.exportPrivate(), 'ES256')) as CryptoKey);
    await expectRefused(noExp);
  });

  it('refuses alg "none"', async () => {
    const now = Math.floor(Date.now() / 1000);
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const payload = base64url.encode(JSON.stringify({ sub: 'alice', aud: AUD, iss: ISS, exp: now + 300, iat: now }));
    await expectRefused(`${header}.${payload}.`);
  });

  it('refuses an HMAC token signed with the public key (algorithm confusion)', async () => {
    const jwk = idp.publicJwks().keys[0]!;
    const pem = await exportSPKI((await importJWK(jwk, 'ES256')) as CryptoKey);
    for (const secret of [pem, JSON.stringify(jwk)]) {
      const confused = await new SignJWT({ sub: 'alice', aud: AUD, iss: ISS })
        .setProtectedHeader({ alg: 'HS256', kid: jwk.kid })
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(secret));
      await expectRefused(confused);
    }
  });

  it('refuses a token with an unknown kid', async () => {
    const stranger = await createIssuer({ issuer: ISS, alg: 'ES256', kid: 'never-published' });
    await expectRefused(await stranger.sign({}, { sub: 'alice', aud: AUD, expiresIn: '5m' }));
  });

  it('picks up a key rotation at the issuer without a restart', async () => {
    const before = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '5m' });
    expect((await call(before)).status).toBe(200);
    await idp.rotate();
    const after = await idp.sign({}, { sub: 'bob', aud: AUD, expiresIn: '5m' });
    const res = await call(after);
    expect(res.status).toBe(200);
    expect(gw.logs.some((l) => l.msg === 'access' && l.sub === 'bob' && l.status === 200)).toBe(true);
  });

  it('never forwards a refused request, and says nothing about why in the body', async () => {
    const res = await expectRefused('not.a.jwt');
    expect(res.json()).toMatchObject({ code: 'ERR_INVALID_TOKEN', type: 'urn:zt-gateway:problem:invalid-token' });
  });
});

describe('when the issuer cannot be reached', () => {
  it('fails closed with 503, not by letting the request through', async () => {
    const stranded = await startTestGateway({
      identity: {
        issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: 'http://127.0.0.1:9/jwks.json', jwksTimeoutMs: 500 }],
      },
      routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
    });
    try {
      const token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '5m' });
      const res = await rawRequest(stranded.url, '/echo/x', { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(503);
      expect(res.json().code).toBe('ERR_ISSUER_UNAVAILABLE');
      expect(res.headers['retry-after']).toBeDefined();
      expect(echo.requests).toHaveLength(0);
      const ready = await rawRequest(stranded.adminUrl, '/readyz');
      expect(ready.status).toBe(503);
      expect(ready.json().checks).toContainEqual(expect.objectContaining({ name: 'issuer:corp', ok: false }));
    } finally {
      await stranded.close();
    }
  });
});

describe('verified-token cache', () => {
  it('stops accepting a cached token once it expires', async () => {
    let now = Date.now();
    const clocked = await startTestGateway(
      {
        identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url, clockToleranceS: 0 }] },
        routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
      },
      { now: () => now },
    );
    try {
      const token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: 60 });
      // The gateway's clock starts at the token's issue, not before the gateway started: on a
      // busy machine that start took seconds, and the token looked issued in the future.
      now = Date.now();
      const send = () => rawRequest(clocked.url, '/echo/x', { headers: { authorization: `Bearer ${token}` } });
      expect((await send()).status).toBe(200);
      expect((await send()).status).toBe(200); // served from the cache
      now += 61_000;
      expect((await send()).status).toBe(401);
    } finally {
      await clocked.close();
    }
  });
});
