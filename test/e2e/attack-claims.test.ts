// Adversarial: claims of the wrong type, lifetimes the IdP never meant, two credentials in one
// request. Tokens are signed by a real key whose JWKS the gateway fetches over HTTP, so only
// the claims decide; requests go out on raw sockets where the attack is the framing itself.
// Every refusal is a 401/400 problem document, never a 500, and the upstream sees nothing.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CompactSign, decodeJwt, importJWK, type CryptoKey } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer, type Issuer } from '../../src/dev/issuer.ts';
import { serveJwks, type JwksServer } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { netRequest } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.claims.test/';
const LAX_ISS = 'https://lax.claims.test/';
const AUD = 'zt-gateway';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Issuer;
let lax: Issuer;
let jwks: JwksServer;
let laxJwks: JwksServer;
let gw: TestGateway;
let idpKey: CryptoKey;

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  lax = await createIssuer({ issuer: LAX_ISS, alg: 'ES256' });
  idpKey = (await importJWK(idp.exportPrivate(), 'ES256')) as CryptoKey;
  jwks = await serveJwks(() => idp.publicJwks());
  laxJwks = await serveJwks(() => lax.publicJwks());
  gw = await startTestGateway({
    identity: {
      issuers: [
        { name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url, clockToleranceS: 10, maxTokenLifetimeS: 3600 },
        // No maxTokenLifetimeS: the default (24 h) applies.
        { name: 'lax', issuer: LAX_ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: laxJwks.url },
      ],
    },
    routes: [
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
      { name: 'pub', pathPrefix: '/pub/', upstream: echo.url, public: true },
    ],
  });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await laxJwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

const nowS = () => Math.floor(Date.now() / 1000);

/** Signs the claims set exactly as written: JSON text, so 1e400 reaches the gateway as such. */
function signRaw(json: string): Promise<string> {
  return new CompactSign(new TextEncoder().encode(json)).setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: idp.kid }).sign(idpKey);
}

/** A valid claims set with `fields` (raw JSON member text, or undefined to drop one) swapped in. */
function claimsJson(fields: Record<string, string | undefined>): string {
  const now = nowS();
  const base: Record<string, string | undefined> = {
    iss: JSON.stringify(ISS),
    aud: JSON.stringify(AUD),
    sub: '"alice"',
    iat: String(now),
    exp: String(now + 300),
    ...fields,
  };
  return `{${Object.entries(base)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${JSON.stringify(k)}:${v}`)
    .join(',')}}`;
}

const call = (token: string, path = '/echo/me') => rawRequest(gw.url, path, { headers: { authorization: `Bearer ${token}` } });

describe('claims by type', () => {
  it('accepts the unaltered claims set (so each refusal below is its one change)', async () => {
    const res = await call(await signRaw(claimsJson({ groups: '["eng"]', acr: '"silver"', amr: '["pwd","hwk"]', auth_time: String(nowS() - 60) })));
    expect(res.status).toBe(200);
    expect(echo.requests).toHaveLength(1);
  });

  const variants: [string, () => Record<string, string | undefined>][] = [
    ['sub ""', () => ({ sub: '""' })],
    ['sub 123', () => ({ sub: '123' })],
    ['sub null', () => ({ sub: 'null' })],
    ['sub ["alice"]', () => ({ sub: '["alice"]' })],
    ['sub {"id":"alice"}', () => ({ sub: '{"id":"alice"}' })],
    ['exp "123…" (a string)', () => ({ exp: `"${nowS() + 300}"` })],
    ['exp 1e400 (Infinity once parsed)', () => ({ exp: '1e400' })],
    ['exp 1e300', () => ({ exp: '1e300' })],
    ['exp 9007199254740993', () => ({ exp: '9007199254740993' })],
    ['exp -1e400', () => ({ exp: '-1e400' })],
    ['exp true', () => ({ exp: 'true' })],
    ['nbf {}', () => ({ nbf: '{}' })],
    ['nbf -1e400', () => ({ nbf: '-1e400' })],
    ['nbf "0"', () => ({ nbf: '"0"' })],
    ['iat "now"', () => ({ iat: '"now"' })],
    ['iat 1e400', () => ({ iat: '1e400' })],
    ['iat 2 minutes in the future (tolerance 10 s)', () => ({ iat: String(nowS() + 120), exp: String(nowS() + 600) })],
    ['a lifetime over the issuer maximum (1 h)', () => ({ iat: String(nowS()), exp: String(nowS() + 3601 + 60) })],
    ['no iat and exp beyond the maximum from now', () => ({ iat: undefined, exp: String(nowS() + 7200) })],
    ['iat far in the past, so exp - iat is huge', () => ({ iat: String(nowS() - 10 * 86400) })],
    ['aud {"zt-gateway":true}', () => ({ aud: '{"zt-gateway":true}' })],
    ['aud [["zt-gateway"]]', () => ({ aud: '[["zt-gateway"]]' })],
    ['iss 1', () => ({ iss: '1' })],
    ['iss ["https://idp.claims.test/"]', () => ({ iss: JSON.stringify([ISS]) })],
    ['groups 1', () => ({ groups: '1' })],
    ['groups {"admin":true}', () => ({ groups: '{"admin":true}' })],
    ['groups [1,2]', () => ({ groups: '[1,2]' })],
    ['groups ["eng",{"admin":true}]', () => ({ groups: '["eng",{"admin":true}]' })],
    ['groups [["admin"]]', () => ({ groups: '[["admin"]]' })],
    ['groups null', () => ({ groups: 'null' })],
    ['groups true', () => ({ groups: 'true' })],
    ['acr 2', () => ({ acr: '2' })],
    ['acr ["silver"]', () => ({ acr: '["silver"]' })],
    ['amr "pwd"', () => ({ amr: '"pwd"' })],
    ['amr ["pwd",1]', () => ({ amr: '["pwd",1]' })],
    ['amr {}', () => ({ amr: '{}' })],
    ['auth_time 1e20', () => ({ auth_time: '1e20' })],
    ['auth_time 1e400', () => ({ auth_time: '1e400' })],
    ['auth_time -1', () => ({ auth_time: '-1' })],
    ['auth_time -1e20', () => ({ auth_time: '-1e20' })],
    ['auth_time "2026-01-01T00:00:00Z"', () => ({ auth_time: '"2026-01-01T00:00:00Z"' })],
    ['auth_time an hour in the future', () => ({ auth_time: String(nowS() + 3600) })],
    ['cnf "jkt"', () => ({ cnf: '"jkt"' })],
    ['cnf []', () => ({ cnf: '[]' })],
    ['cnf null', () => ({ cnf: 'null' })],
    ['cnf {"jkt":1}', () => ({ cnf: '{"jkt":1}' })],
    ['cnf {"jkt":"short"}', () => ({ cnf: '{"jkt":"short"}' })],
    ['cnf {"x5t#S256":["a"]}', () => ({ cnf: '{"x5t#S256":["a"]}' })],
    ['cnf {} (no method the gateway can check)', () => ({ cnf: '{}' })],
    ['cnf {"jwk":{…}} (a method the gateway does not check)', () => ({ cnf: '{"jwk":{"kty":"EC","crv":"P-256","x":"a","y":"b"}}' })],
  ];

  for (const [what, fields] of variants) {
    it(`refuses ${what} with 401, never 500, and forwards nothing`, async () => {
      const res = await call(await signRaw(claimsJson(fields())));
      expect(res.status, res.text).toBe(401);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json()).toMatchObject({ status: 401, code: 'ERR_INVALID_TOKEN' });
      expect(String(res.headers['www-authenticate'])).toContain('error="invalid_token"');
      expect(echo.requests).toHaveLength(0);
      // A second send (now answered from whatever the gateway cached) is refused the same way.
      expect((await call(await signRaw(claimsJson(fields())))).status).toBe(401);
      expect(echo.requests).toHaveLength(0);
    });
  }

  it('applies the default maximum lifetime (24 h) to an issuer that sets none', async () => {
    const ok = await lax.sign({}, { sub: 'alice', aud: AUD, expiresIn: '23h' });
    expect((await call(ok)).status).toBe(200);
    echo.requests.length = 0;
    const tooLong = await lax.sign({}, { sub: 'alice', aud: AUD, expiresIn: '25h' });
    const res = await call(tooLong);
    expect(res.status).toBe(401);
    expect(echo.requests).toHaveLength(0);
  });

  it('never answers 500 to a policy-facing claim, and the log has no unhandled error', async () => {
    expect(gw.logs.filter((l) => l.msg === 'access' && l.status >= 500)).toEqual([]);
    expect(gw.logs.filter((l) => l.level >= 50)).toEqual([]);
  });
});

describe('the identity assertion never outlives the token', () => {
  it('caps exp at the token exp, stops reusing at it, and the token is refused from its exp on', async () => {
    // exp whole seconds away, at least 3 s: a handful of requests fit before it.
    const exp = nowS() + 4;
    const token = await idp.sign({ exp }, { sub: 'alice', aud: AUD });
    const assertions: string[] = [];
    let refusedAtMs: number | undefined;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const res = await call(token);
      if (res.status === 401) {
        refusedAtMs = Date.now();
        expect(res.json().code).toBe('ERR_INVALID_TOKEN');
        break;
      }
      expect(res.status).toBe(200);
      assertions.push(res.json().headers['x-zt-assertion']);
      await new Promise((r) => setTimeout(r, 200)); // pacing of the poll, not synchronisation
    }
    expect(refusedAtMs).toBeDefined();
    // Honoured to the second: not accepted for clockToleranceS (10 s) past exp.
    expect(refusedAtMs!).toBeGreaterThanOrEqual(exp * 1000);
    expect(refusedAtMs!).toBeLessThan((exp + 5) * 1000);
    expect(assertions.length).toBeGreaterThan(1);
    // reuseS (30 s) would hand the first assertion out to the end; it still ends with the token.
    for (const a of assertions) expect(decodeJwt(a).exp!).toBeLessThanOrEqual(exp);
    const last = decodeJwt(assertions.at(-1)!);
    expect(last.exp).toBe(exp);
  });
});

describe('one credential per request', () => {
  let good: string;
  let other: string;
  beforeAll(async () => {
    good = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '5m' });
    other = await idp.sign({}, { sub: 'mallory', aud: AUD, expiresIn: '5m' });
  });

  // Raw socket: the Authorization lines go out exactly as written (any case, repeated, empty).
  const send = (path: string, authLines: string[]) => netRequest(gw.url, { target: path, lines: authLines });

  it('accepts a single Authorization header on the raw socket (the baseline)', async () => {
    const res = await send('/echo/me', [`Authorization: Bearer ${good}`]);
    expect(res.status).toBe(200);
  });

  const cases: [string, (path: string) => string[]][] = [
    ['the same token twice', () => [`Authorization: Bearer ${good}`, `Authorization: Bearer ${good}`]],
    ['two different tokens', () => [`Authorization: Bearer ${good}`, `Authorization: Bearer ${other}`]],
    ['a valid token after a garbage one', () => ['Authorization: Basic YWRtaW46YWRtaW4=', `Authorization: Bearer ${good}`]],
    ['a garbage one after a valid token', () => [`Authorization: Bearer ${good}`, 'Authorization: Bearer x']],
    ['names in different case', () => [`authorization: Bearer ${good}`, `AUTHORIZATION: Bearer ${other}`]],
    ['an empty second one', () => [`Authorization: Bearer ${good}`, 'Authorization:']],
    ['three of them', () => [`Authorization: Bearer ${good}`, `aUtHoRiZaTiOn: Bearer ${good}`, `Authorization: Bearer ${other}`]],
  ];
  for (const [what, lines] of cases) {
    it(`refuses ${what} with 400`, async () => {
      const res = await send('/echo/me', lines('/echo/me'));
      expect(res.status, res.body).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/i);
      expect(JSON.parse(res.body)).toMatchObject({ status: 400, code: 'ERR_BAD_REQUEST' });
      expect(echo.requests).toHaveLength(0);
    });
  }

  it('refuses two Authorization headers on a public route too', async () => {
    const res = await send('/pub/x', [`Authorization: Bearer ${good}`, `Authorization: Bearer ${other}`]);
    expect(res.status).toBe(400);
    expect(echo.requests).toHaveLength(0);
  });
});
