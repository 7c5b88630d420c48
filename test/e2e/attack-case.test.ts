// Case in paths, attacked over raw sockets. Paths are case-sensitive to the gateway, while
// Express (by default), ASP.NET and IIS read `/ECHO/x` as `/echo/x`: sent to another route
// (here the public catch-all), such an upstream would serve `/echo` under the wrong route's
// policy. So a path whose route changes when case is ignored is refused (400 ERR_BAD_PATH); a
// route that declares its upstream case-insensitive matches ignoring case, and its policies see
// the path lower-cased, so a rule about `/api/admin` also holds for `/API/ADMIN`. The upstream
// always gets the path as the client wrote it. Route hosts compare case-insensitively.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { netRequest, type NetResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.case.test/';
const AUD = 'zt-gateway';

// Written in lower case, as policies/README.md asks for routes with caseInsensitive.
const API_POLICY = `apiVersion: zt-gateway/v1
name: api
appliesTo: { routes: [api] }
rules:
  - name: signed-in
    effect: allow
    when: 'true'
  - name: no-admin
    effect: deny
    when: 'request.path.startsWith("/api/admin")'
`;
const API_SECRETS = `apiVersion: zt-gateway/v1
name: api-secrets
appliesTo: { routes: [api], pathPrefixes: [/api/secrets] }
rules:
  - name: never
    effect: deny
    when: 'true'
`;
const ECHO_POLICY = `apiVersion: zt-gateway/v1
name: echo
appliesTo: { routes: [echo] }
rules:
  - name: signed-in
    effect: allow
    when: 'true'
`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let bearer: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-case-'));
  writeFileSync(join(dir, 'api.yaml'), API_POLICY);
  writeFileSync(join(dir, 'api-secrets.yaml'), API_SECRETS);
  writeFileSync(join(dir, 'echo.yaml'), ECHO_POLICY);
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      // The catch-all a case-shifted path would otherwise fall through to, unauthenticated.
      { name: 'root', pathPrefix: '/', upstream: echo.url, public: true },
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
      { name: 'api', pathPrefix: '/api/', upstream: echo.url, caseInsensitive: true },
      { name: 'shop', pathPrefix: '/Shop/', upstream: `${echo.url}/base/`, caseInsensitive: true, stripPrefix: true, public: true },
      { name: 'hosted', pathPrefix: '/hosted/', upstream: echo.url, hosts: ['App.Case.Test'], public: true },
    ],
    policies: { dir, decisionLog: { allowSampleRate: 1 } },
  });
  bearer = `Authorization: Bearer ${await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' })}`;
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  echo.requests.length = 0;
});

const send = (target: string, lines: string[] = [bearer]): Promise<NetResponse> => netRequest(gw.url, { target, lines });

/** What the upstream received for the one request it got. */
function forwarded(): string {
  expect(echo.requests).toHaveLength(1);
  return echo.requests[0]!.url;
}

describe('case-sensitive routes (the default)', () => {
  it.each(['/ECHO/x', '/Echo/x', '/eCHO', '/ECHO', '/%45CHO/x'])('refuses %s with 400: ignoring case it is the echo route, not the catch-all', async (target) => {
    // Without a token too: the refusal comes before authentication, as the catch-all is public.
    for (const lines of [[bearer], []]) {
      const res = await send(target, lines);
      expect(res.status, target).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json().code).toBe('ERR_BAD_PATH');
    }
    expect(echo.requests).toHaveLength(0);
  });

  it('serves the exact spelling, and upper case where it changes no route', async () => {
    expect((await send('/echo/x')).status).toBe(200);
    expect(forwarded()).toBe('/echo/x');
    echo.requests.length = 0;
    expect((await send('/echo/ABC?Q=1')).status).toBe(200);
    expect(forwarded()).toBe('/echo/ABC?Q=1');
    echo.requests.length = 0;
    expect((await send('/Other/Thing', [])).status).toBe(200);
    expect(forwarded()).toBe('/Other/Thing');
  });
});

describe('a caseInsensitive route', () => {
  it.each(['/api/x', '/API/x', '/Api/X/y', '/API'])('matches %s, and the upstream gets it as sent', async (target) => {
    const res = await send(target);
    expect(res.status, target).toBe(200);
    expect(forwarded()).toBe(target);
  });

  it('needs its token whatever the case (it is not the public catch-all)', async () => {
    const res = await send('/API/x', []);
    expect(res.status).toBe(401);
    expect(echo.requests).toHaveLength(0);
  });

  it.each(['/api/admin', '/API/ADMIN', '/Api/Admin/x', '/aPi/aDmIn/users?id=1'])('denies %s by the lower-case rule about /api/admin', async (target) => {
    const res = await send(target);
    expect(res.status, target).toBe(403);
    expect(res.json().code).toBe('ERR_ACCESS_DENIED');
    expect(echo.requests).toHaveLength(0);
    // The decision was made on the lower-cased path; the access line keeps the client's.
    const reqId = res.headers['x-request-id'];
    const decision = gw.logs.findLast((l) => l.log === 'decision' && l.reqId === reqId);
    expect(decision).toMatchObject({ effect: 'deny', rules: [{ policy: 'api', rule: 'no-admin' }] });
    expect(decision?.input.request.path).toBe(target.split('?')[0]!.toLowerCase());
    const access = gw.logs.findLast((l) => l.log === 'access' && l.reqId === reqId);
    expect(access?.path).toBe(target.split('?')[0]);
  });

  it('scopes policies by appliesTo.pathPrefixes on the lower-cased path too', async () => {
    for (const target of ['/api/secrets/k', '/API/SECRETS/k', '/Api/Secrets']) {
      expect((await send(target)).status, target).toBe(403);
    }
    expect(echo.requests).toHaveLength(0);
  });

  it('matches a prefix written with upper case in any case, and strips it by length', async () => {
    for (const target of ['/Shop/Cart', '/shop/Cart', '/SHOP/Cart']) {
      echo.requests.length = 0;
      expect((await send(target, [])).status, target).toBe(200);
      expect(forwarded()).toBe('/base/Cart');
    }
  });
});

describe('route hosts', () => {
  it('compares hosts ignoring case: "App.Case.Test" in the config answers any spelling', async () => {
    for (const host of ['app.case.test', 'APP.CASE.TEST', 'App.Case.Test']) {
      echo.requests.length = 0;
      const res = await send('/hosted/x', [`Host: ${host}`]);
      expect(res.status, host).toBe(200);
      expect(forwarded()).toBe('/hosted/x');
    }
  });
});
