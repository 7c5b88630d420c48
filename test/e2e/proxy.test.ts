// The proxy end to end: real gateway, real echo upstream that records what reached it.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import http from 'node:http';
import WebSocket from 'ws';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { freePort } from '../helpers/ports.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let auth: { authorization: string };

function gatewayConfig(extraServer: Record<string, unknown> = {}, deadPort = 9) {
  return {
    server: { limits: { maxBodyBytes: 1024 }, ...extraServer },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url, websocket: true },
      { name: 'public', pathPrefix: '/public/', upstream: echo.url, public: true },
      { name: 'strip', pathPrefix: '/strip/', upstream: `${echo.url}/base/`, stripPrefix: true },
      { name: 'slow', pathPrefix: '/slow/', upstream: echo.url, timeoutMs: 300 },
      { name: 'dead', pathPrefix: '/dead/', upstream: `http://127.0.0.1:${deadPort}` },
      { name: 'nows', pathPrefix: '/nows/', upstream: echo.url },
      { name: 'passthrough', pathPrefix: '/passthrough/', upstream: echo.url, forwardAuthorization: true },
    ],
  };
}

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway(gatewayConfig({}, await freePort()));
  auth = { authorization: `Bearer ${await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' })}` };
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

describe('routing and forwarding', () => {
  it('forwards the path and query unchanged and sets forwarding headers', async () => {
    const res = await rawRequest(gw.url, '/echo/a/b?x=1&y=%20', { headers: auth });
    expect(res.status).toBe(200);
    const seen = res.json();
    expect(seen.url).toBe('/echo/a/b?x=1&y=%20');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(gw.url).host);
    expect(seen.headers['x-request-id']).toBe(res.headers['x-request-id']);
    expect(seen.headers.host).toBe(new URL(echo.url).host);
  });

  it('takes the longest matching prefix, and strips it where the route says so', async () => {
    const res = await rawRequest(gw.url, '/strip/x/y', { headers: auth });
    expect(res.json().url).toBe('/base/x/y');
  });

  it('matches a prefix by whole segments only', async () => {
    const res = await rawRequest(gw.url, '/echoes', { headers: auth });
    expect(res.status).toBe(404);
    expect(res.json().code).toBe('ERR_ROUTE_NOT_FOUND');
  });

  it('answers unknown routes with a 404 problem and forwards nothing', async () => {
    const res = await rawRequest(gw.url, '/nowhere', { headers: auth });
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(echo.requests).toHaveLength(0);
  });

  it('lets a public route through without a token', async () => {
    const res = await rawRequest(gw.url, '/public/status');
    expect(res.status).toBe(200);
  });

  it('streams request and response bodies', async () => {
    const body = 'x'.repeat(1000);
    const res = await rawRequest(gw.url, '/echo/upload', { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body });
    expect(res.json().body).toBe(body);
    const big = await rawRequest(gw.url, '/echo/download?bytes=3000000', { headers: auth });
    expect(big.status).toBe(200);
    expect(big.text.length).toBe(3_000_000);
  });

  it('forwards any content type untouched, JSON included', async () => {
    const json = '{"a": 1,   "b": [true]}';
    const res = await rawRequest(gw.url, '/echo/j', { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: json });
    expect(res.json().body).toBe(json); // byte for byte: never parsed and re-serialised
  });
});

describe('credentials', () => {
  it('does not forward the client’s Authorization: upstreams get the signed assertion', async () => {
    const seen = (await rawRequest(gw.url, '/echo/x', { headers: auth })).json().headers;
    expect(seen.authorization).toBeUndefined();
    expect(seen['x-zt-assertion']).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
  });

  it('forwards it on a route that opts in', async () => {
    const seen = (await rawRequest(gw.url, '/passthrough/x', { headers: auth })).json().headers;
    expect(seen.authorization).toBe(auth.authorization);
  });
});

describe('path confusion', () => {
  const attacks = ['/echo/..%2f..%2fadmin', '/echo/%2e%2e/x', '/echo\\..\\x', '/echo/%2E%2e/', '/echo/%00', '/echo/../public/x', '/echo/a/../../public/x'];
  for (const path of attacks) {
    it(`refuses ${path} with 400 before the upstream`, async () => {
      const res = await rawRequest(gw.url, path, { headers: auth });
      expect(res.status).toBe(400);
      expect(res.json().code).toBe('ERR_BAD_PATH');
      expect(echo.requests).toHaveLength(0);
    });
  }

  it('refuses dot segments even within the route (issue 11), and merges duplicate slashes', async () => {
    const res = await rawRequest(gw.url, '/echo/./a//b/../c', { headers: auth });
    expect(res.status).toBe(400);
    expect(res.json().code).toBe('ERR_BAD_PATH');
    expect((await rawRequest(gw.url, '/echo/a//b', { headers: auth })).json().url).toBe('/echo/a/b');
  });

  it('routes an encoded unreserved character as its plain form', async () => {
    const res = await rawRequest(gw.url, '/ech%6f/x', { headers: auth });
    expect(res.json().url).toBe('/echo/x');
  });
});

describe('headers from untrusted clients', () => {
  it('replaces a spoofed X-Forwarded-For instead of appending to it', async () => {
    const res = await rawRequest(gw.url, '/echo/x', {
      headers: { ...auth, 'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', 'x-real-ip': '6.6.6.6', forwarded: 'for=6.6.6.6' },
    });
    const seen = res.json().headers;
    expect(seen['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen['x-forwarded-proto']).toBe('http');
    expect(seen['x-forwarded-host']).not.toBe('evil.example');
    expect(seen['x-real-ip']).toBeUndefined();
    expect(seen.forwarded).toBeUndefined();
  });

  it('does not take a request id from an untrusted client', async () => {
    const res = await rawRequest(gw.url, '/echo/x', { headers: { ...auth, 'x-request-id': 'client-chosen' } });
    expect(res.json().headers['x-request-id']).not.toBe('client-chosen');
  });

  it('strips hop-by-hop headers, including those named in Connection', async () => {
    const res = await rawRequest(gw.url, '/echo/x', {
      headers: { ...auth, connection: 'keep-alive, x-hop', 'x-hop': 'secret', 'keep-alive': 'timeout=5', 'proxy-authorization': 'Basic eA==' },
    });
    const seen = res.json().headers;
    expect(seen['x-hop']).toBeUndefined();
    expect(seen['keep-alive']).toBeUndefined();
    expect(seen['proxy-authorization']).toBeUndefined();
  });
});

describe('behind a trusted proxy', () => {
  it('appends to the chain and keeps the proxy’s request id', async () => {
    const behind = await startTestGateway(gatewayConfig({ trustedProxies: ['127.0.0.1'] }));
    try {
      const res = await rawRequest(behind.url, '/echo/x', {
        headers: { ...auth, 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'https', 'x-request-id': 'lb-1234' },
      });
      const seen = res.json().headers;
      expect(seen['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
      expect(seen['x-forwarded-proto']).toBe('https');
      expect(seen['x-request-id']).toBe('lb-1234');
      expect(behind.logs.some((l) => l.msg === 'access' && l.client === '203.0.113.7')).toBe(true);
    } finally {
      await behind.close();
    }
  });
});

describe('limits and upstream failures', () => {
  it('refuses a body over the limit by Content-Length with 413', async () => {
    const res = await rawRequest(gw.url, '/echo/up', { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: 'x'.repeat(2048) });
    expect(res.status).toBe(413);
    expect(res.json().code).toBe('ERR_PAYLOAD_TOO_LARGE');
    expect(echo.requests).toHaveLength(0);
  });

  it('refuses a chunked body that grows over the limit with 413', async () => {
    const url = new URL(gw.url);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: url.hostname, port: url.port, method: 'POST', path: '/echo/chunked', headers: { ...auth, 'content-type': 'text/plain' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write('y'.repeat(512));
      req.end();
    });
    expect(status).toBe(413);
  });

  it('answers 502 when the upstream is unreachable', async () => {
    const res = await rawRequest(gw.url, '/dead/x', { headers: auth });
    expect(res.status).toBe(502);
    expect(res.json().code).toBe('ERR_UPSTREAM_UNREACHABLE');
    expect(res.text).not.toMatch(/ECONNREFUSED|127\.0\.0\.1/);
  });

  it('answers 504 when the upstream is slower than the route timeout', async () => {
    const started = performance.now();
    const res = await rawRequest(gw.url, '/slow/x?delay=2000', { headers: auth });
    expect(res.status).toBe(504);
    expect(performance.now() - started).toBeLessThan(1500);
    expect(res.json().code).toBe('ERR_UPSTREAM_TIMEOUT');
  });

  it('passes upstream error statuses through as they are', async () => {
    const res = await rawRequest(gw.url, '/echo/x?status=503', { headers: auth });
    expect(res.status).toBe(503);
    expect(echo.requests).toHaveLength(1); // and never retried behind the client's back
  });
});

describe('websocket', () => {
  const wsUrl = (path: string) => gw.url.replace('http:', 'ws:') + path;

  it('proxies an upgrade after authentication and relays messages both ways', async () => {
    const ws = new WebSocket(wsUrl('/echo/socket'), { headers: auth });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const reply = new Promise<string>((resolve) => ws.once('message', (m) => resolve(m.toString())));
    ws.send('ping over the gateway');
    expect(await reply).toBe('ping over the gateway');
    ws.close();
    const upgrade = echo.requests.find((r) => r.url === '/echo/socket');
    expect(upgrade?.headers['x-forwarded-for']).toBe('127.0.0.1');
  });

  function refusedStatus(path: string, headers: Record<string, string>): Promise<number> {
    const ws = new WebSocket(wsUrl(path), { headers });
    return new Promise((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => reject(new Error('socket opened')));
      ws.once('error', () => {});
    });
  }

  it('refuses an upgrade without a token, and the upstream never sees it', async () => {
    expect(await refusedStatus('/echo/socket', {})).toBe(401);
    expect(echo.requests).toHaveLength(0);
  });

  it('refuses an upgrade on a route that does not enable websockets', async () => {
    expect(await refusedStatus('/nows/socket', auth)).toBe(400);
    expect(echo.requests).toHaveLength(0);
  });
});
