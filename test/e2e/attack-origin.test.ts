// DPoP htu against the gateway's own origin (RFC 9449 §4.3 step 9, §11.1): a proof minted for
// another server is refused even when the client sets Host (or X-Forwarded-Host) to that
// server's name, and a proof for this gateway's configured origin is accepted. Real proofs
// from the `dpop` package, tokens bound with cnf.jkt, requests over raw sockets so Host is
// whatever the attacker writes.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { generateKeyPair as dpopKeyPair, generateProof } from 'dpop';
import { exportJWK, type JWK } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { netRequest, type NetResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.origin.test/';
const AUD = 'zt-gateway';
type KeyPair = Awaited<ReturnType<typeof dpopKeyPair>>;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let device: KeyPair;
let token: string;

const routes = () => [
  { name: 'bound', pathPrefix: '/bound/', upstream: echo.url, device: { binding: 'required' } },
  { name: 'app', pathPrefix: '/app/', upstream: echo.url, hosts: ['app.corp.test'], device: { binding: 'required' } },
];
const issuers = () => [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }];

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  device = await dpopKeyPair('ES256');
  const { kty, crv, x, y } = (await exportJWK(device.publicKey)) as JWK;
  const jkt = createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
  token = await idp.sign({ cnf: { jkt } }, { sub: 'alice', aud: AUD, expiresIn: '10m' });
});

afterAll(async () => {
  await jwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

/** A request whose proof names `htu`, sent with the given header lines (Host among them). */
async function call(gw: TestGateway, path: string, htu: string, lines: string[]): Promise<NetResponse> {
  const proof = await generateProof(device, htu, 'GET', undefined, token);
  return netRequest(gw.url, { target: path, lines: [`Authorization: DPoP ${token}`, `DPoP: ${proof}`, ...lines] });
}

function expectRefused(res: NetResponse, status: number, code: string): void {
  expect(res.status, res.body).toBe(status);
  expect(res.json().code).toBe(code);
  expect(echo.requests).toHaveLength(0);
}

describe('with server.publicOrigins', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      server: { publicOrigins: ['http://gw.corp.test', 'https://gw.corp.test:8443'], trustedProxies: ['10.0.0.0/8'] },
      identity: { issuers: issuers() },
      routes: routes(),
    });
  });
  afterAll(async () => gw?.close());

  it('accepts a proof for the configured origin, by any spelling of its authority', async () => {
    for (const host of ['gw.corp.test', 'GW.corp.test', 'gw.corp.test:80', 'gw.corp.test.']) {
      echo.requests.length = 0;
      const res = await call(gw, '/bound/x', 'http://gw.corp.test/bound/x', [`Host: ${host}`]);
      expect(res.status, `${host}: ${res.body}`).toBe(200);
      expect(echo.requests).toHaveLength(1);
    }
  });

  it('accepts a proof on a route host (default port)', async () => {
    const res = await call(gw, '/app/x', 'http://app.corp.test/app/x', ['Host: app.corp.test']);
    expect(res.status, res.body).toBe(200);
  });

  it('refuses a proof minted for another server, even with Host set to that server', async () => {
    for (const [htu, host] of [
      ['http://api.other.test/bound/x', 'api.other.test'],
      ['http://api.other.test:8080/bound/x', 'api.other.test:8080'],
      ['http://gw.corp.test:9999/bound/x', 'gw.corp.test:9999'],
      ['http://app.corp.test:8080/app/x', 'app.corp.test:8080'],
      ['http://127.0.0.1/bound/x', '127.0.0.1'],
    ]) {
      expectRefused(await call(gw, host!.startsWith('app') ? '/app/x' : '/bound/x', htu!, [`Host: ${host}`]), 421, 'ERR_MISDIRECTED_REQUEST');
    }
  });

  it('refuses a proof for another origin of the same name (scheme or port) sent to this one', async () => {
    for (const htu of ['https://gw.corp.test/bound/x', 'https://gw.corp.test:8443/bound/x', 'http://gw.corp.test:8443/bound/x', 'http://app.corp.test/bound/x']) {
      expectRefused(await call(gw, '/bound/x', htu, ['Host: gw.corp.test']), 401, 'ERR_INVALID_DPOP_PROOF');
    }
  });

  it('an untrusted client cannot move the origin with X-Forwarded-Host or -Proto', async () => {
    const res = await call(gw, '/bound/x', 'https://gw.corp.test:8443/bound/x', ['Host: gw.corp.test', 'X-Forwarded-Host: gw.corp.test:8443', 'X-Forwarded-Proto: https']);
    expectRefused(res, 401, 'ERR_INVALID_DPOP_PROOF');
    const ok = await call(gw, '/bound/x', 'http://gw.corp.test/bound/x', ['Host: gw.corp.test', 'X-Forwarded-Host: api.other.test', 'X-Forwarded-Proto: https']);
    expect(ok.status).toBe(200);
    expect(ok.json().headers).toMatchObject({ 'x-forwarded-host': 'gw.corp.test', 'x-forwarded-proto': 'http' });
  });
});

describe('behind a trusted proxy', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      server: { publicOrigins: ['https://gw.corp.test'], trustedProxies: ['loopback'] },
      identity: { issuers: issuers() },
      routes: routes(),
    });
  });
  afterAll(async () => gw?.close());

  it('checks htu against the origin the proxy names, when it is a configured one', async () => {
    const lines = ['Host: internal:8080', 'X-Forwarded-Host: gw.corp.test', 'X-Forwarded-Proto: https'];
    const res = await call(gw, '/bound/x', 'https://gw.corp.test/bound/x', lines);
    expect(res.status, res.body).toBe(200);
    echo.requests.length = 0;
    expectRefused(await call(gw, '/bound/y', 'http://gw.corp.test/bound/y', lines), 401, 'ERR_INVALID_DPOP_PROOF');
  });

  it('refuses a forwarded authority it does not serve', async () => {
    const res = await call(gw, '/bound/x', 'https://api.other.test/bound/x', ['Host: internal', 'X-Forwarded-Host: api.other.test', 'X-Forwarded-Proto: https']);
    expectRefused(res, 421, 'ERR_MISDIRECTED_REQUEST');
  });
});

describe('without publicOrigins (the address the client connected to)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ identity: { issuers: issuers() }, routes: routes() });
  });
  afterAll(async () => gw?.close());

  it('accepts proofs for this listener by its address or a loopback name', async () => {
    const port = new URL(gw.url).port;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`]) {
      const res = await call(gw, '/bound/x', `http://${host}/bound/x`, [`Host: ${host}`]);
      expect(res.status, res.body).toBe(200);
    }
  });

  it('refuses a proof for another server with a matching Host', async () => {
    const port = new URL(gw.url).port;
    for (const host of [`api.other.test:${port}`, 'api.other.test', `127.0.0.1:${Number(port) + 1}`]) {
      expectRefused(await call(gw, '/bound/x', `http://${host}/bound/x`, [`Host: ${host}`]), 421, 'ERR_MISDIRECTED_REQUEST');
    }
  });
});
