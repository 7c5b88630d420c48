// What an upstream sends back, attacked from the upstream's side: banners, stack traces in
// 5xx bodies, internal addresses in Location, cookies meant to reach other routes, host-wide
// security headers (HSTS off, CORS with credentials, Clear-Site-Data), and a 304 with
// Content-Length. Real upstreams on 127.0.0.1 answer per path; two routes share the gateway,
// so one route's cookies can be replayed to the other. Each opt-out shows the opposite.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import http, { type OutgoingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIssuer } from '../../src/dev/issuer.ts';
import { HOST_WIDE_HEADER_GROUPS } from '../../src/config/schema.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest, type RawResponse } from '../helpers/http.ts';
import { exchange, parseResponses, startRawUpstream } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.response.test/';
const AUD = 'zt-gateway';
const INTERNAL_HOST = 'db-01.internal.corp';
const STACK = [
  `Error: connect ECONNREFUSED ${INTERNAL_HOST}:5432`,
  '    at Object.<anonymous> (/srv/orders/server.js:12:9)',
  '    at Module._compile (node:internal/modules/cjs/loader:1554:14)',
].join('\n');

// Several at once: a session cookie for the whole host, one for a parent domain, a __Host-
// one, a quoted value, attributes in odd case, and one no browser would read.
const UPSTREAM_COOKIES = [
  'sid=abc123; Path=/; HttpOnly; SameSite=Lax',
  'wide=1; Domain=.example.com; Path=/',
  '__Host-sess=xyz; Secure; Path=/',
  'q="hello world"; pAtH=/base/sub; SECURE',
  'novalue; Path=/',
];

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

interface Seen {
  method: string;
  url: string;
  cookie: string | undefined;
}

/** An upstream answering by the last segment of its path, whatever base path or prefix put it there. */
async function startUpstream() {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://upstream');
    seen.push({ method: req.method!, url: req.url!, cookie: req.headers.cookie });
    req.resume();
    const action = url.pathname.slice(url.pathname.lastIndexOf('/') + 1);
    const send = (status: number, headers: OutgoingHttpHeaders, body?: string) => {
      res.writeHead(status, headers);
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    switch (action) {
      case 'banners':
        return send(200, { server: 'Apache/2.4.1 (internal-build-7)', 'x-powered-by': 'Express', 'x-aspnet-version': '4.0.30319', 'content-type': 'text/plain' }, 'ok');
      case 'crash':
        return send(
          500,
          {
            'content-type': 'text/html; charset=utf-8',
            'content-length': Buffer.byteLength(STACK),
            etag: '"trace-1"',
            'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT',
            'content-disposition': 'attachment; filename="trace.txt"',
            'content-language': 'en',
            'x-debug-host': INTERNAL_HOST,
            'set-cookie': 'sid=half-done; Path=/',
          },
          STACK,
        );
      case 'bad-gateway':
        return send(502, { 'content-type': 'text/plain' }, `upstream ${INTERNAL_HOST} refused`);
      case 'unavailable':
        return send(503, { 'retry-after': url.searchParams.get('retry') ?? '120', 'content-type': 'text/plain' }, STACK);
      case 'redirect': {
        const headers: OutgoingHttpHeaders = { location: url.searchParams.get('to')! };
        if (url.searchParams.has('cl')) headers['content-location'] = url.searchParams.get('cl')!;
        return send(302, headers, '');
      }
      case 'cookies':
        return send(200, { 'set-cookie': UPSTREAM_COOKIES, 'content-type': 'text/plain' }, 'ok');
      case 'domain-cookies':
        return send(200, { 'set-cookie': ['in=1; Domain=.example.com', 'sub=1; Domain=App.Example.COM', 'out=1; Domain=evil.test'] }, 'ok');
      case 'hostwide':
        return send(
          200,
          {
            'strict-transport-security': 'max-age=0',
            'access-control-allow-origin': req.headers.origin ?? '*',
            'access-control-allow-credentials': 'true',
            'access-control-expose-headers': 'x-secret',
            'clear-site-data': '"*"',
            'alt-svc': 'h3=":8443"; ma=86400',
            nel: '{"report_to":"x","max_age":86400}',
            'report-to': '{"group":"x","max_age":86400,"endpoints":[{"url":"https://collector.evil.test"}]}',
            'reporting-endpoints': 'x="https://collector.evil.test"',
            'service-worker-allowed': '/',
            'public-key-pins': 'pin-sha256="AAAA"; max-age=5184000',
            'public-key-pins-report-only': 'pin-sha256="AAAA"; max-age=5184000',
            'expect-ct': 'max-age=86400, enforce',
            'x-custom': 'kept',
          },
          'ok',
        );
      case 'not-modified':
        return send(304, { 'content-length': '42', etag: '"v1"', 'cache-control': 'max-age=60' });
      case 'sized':
        return send(200, { 'content-length': '42', 'content-type': 'text/plain' }, 'x'.repeat(42));
      case 'nocontent':
        return send(204, {});
      default:
        return send(200, { 'content-type': 'application/json' }, JSON.stringify({ url: req.url, cookie: req.headers.cookie ?? null }));
    }
  });
  // WebSocket handshakes: a 101 with banners, a cookie and HSTS, or a 500 with a stack trace.
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    seen.push({ method: req.method!, url: req.url!, cookie: req.headers.cookie });
    if (req.url!.endsWith('/ws-crash')) {
      socket.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(STACK)}\r\nServer: internal-ws/1.0\r\n\r\n${STACK}`);
      return;
    }
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64');
    socket.end(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\nServer: internal-ws/1.0\r\nX-Powered-By: ws\r\nSet-Cookie: ws=1; Path=/\r\nStrict-Transport-Security: max-age=0\r\n\r\n`,
    );
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

const QUARANTINE_POLICY = `apiVersion: zt-gateway/v1
name: quarantine-everyone
appliesTo: { routes: [q] }
rules:
  - name: to-quarantine
    effect: allow
    when: has(identity.sub)
    obligations: { upstream: quarantine }
`;

let upA: Awaited<ReturnType<typeof startUpstream>>;
let upB: Awaited<ReturnType<typeof startUpstream>>;
let raw: Awaited<ReturnType<typeof startRawUpstream>>;
let weird: Awaited<ReturnType<typeof startRawUpstream>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let token: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-attack-response-'));
  writeFileSync(join(dir, 'quarantine.yaml'), QUARANTINE_POLICY);
  upA = await startUpstream();
  upB = await startUpstream();
  // What node:http will not send: a 204 with Content-Length (RFC 9110 §8.6 forbids it).
  raw = await startRawUpstream(() => 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n');
  weird = await startRawUpstream(() => `HTTP/1.1 999 Weird\r\nContent-Length: ${STACK.length}\r\nServer: raw\r\n\r\n${STACK}`);
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    server: { logLevel: 'debug' },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      // Prefix stripped and a base path: the upstream believes it lives at /base.
      { name: 'a', pathPrefix: '/a/', upstream: `${upA.url}/base/`, stripPrefix: true, public: true, websocket: true },
      { name: 'b', pathPrefix: '/b/', upstream: upB.url, public: true, websocket: true },
      // A base path without stripping: /based/x is /base/based/x upstream.
      { name: 'based', pathPrefix: '/based/', upstream: `${upB.url}/base`, public: true },
      {
        name: 'pass',
        pathPrefix: '/pass/',
        upstream: `${upA.url}/base/`,
        stripPrefix: true,
        public: true,
        websocket: true,
        response: { banners: 'pass', errorBodies: 'pass', redirects: 'pass', cookies: 'pass' },
      },
      { name: 'own', pathPrefix: '/own/', upstream: upB.url, public: true, response: { ownHostHeaders: [...HOST_WIDE_HEADER_GROUPS] } },
      {
        name: 'set',
        pathPrefix: '/set/',
        upstream: upB.url,
        public: true,
        response: { setHeaders: { 'Strict-Transport-Security': 'max-age=63072000; includeSubDomains', 'Content-Security-Policy': "default-src 'none'", Server: 'zt-gateway' } },
      },
      { name: 'dom', pathPrefix: '/dom/', upstream: upB.url, public: true, response: { cookieDomain: 'example.com' } },
      { name: 'raw', pathPrefix: '/raw/', upstream: raw.url, public: true },
      { name: 'weird', pathPrefix: '/weird/', upstream: weird.url, public: true },
      // A policy obligation sends every request to the quarantine upstream.
      { name: 'q', pathPrefix: '/q/', upstream: `${upA.url}/base/`, stripPrefix: true },
    ],
    upstreams: { quarantine: `${upB.url}/quarantine/` },
    policies: { dir },
  });
  token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await upA?.close();
  await upB?.close();
  await raw?.close();
  await weird?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  upA.seen.length = 0;
  upB.seen.length = 0;
});

const get = (path: string, opts: Parameters<typeof rawRequest>[2] = {}): Promise<RawResponse> => rawRequest(gw.url, path, opts);
const accessLine = (reqId: string) => gw.logs.find((l) => l.log === 'access' && l.reqId === reqId);
const setCookies = (res: RawResponse): string[] => (res.headers['set-cookie'] as string[] | undefined) ?? [];
/** The name=value pairs a browser would send back for these Set-Cookie headers. */
const pairs = (cookies: string[]): string[] => cookies.map((c) => c.split(';')[0]!);
const location = (path: string, to: string, cl?: string) => get(`${path}?to=${encodeURIComponent(to)}${cl === undefined ? '' : `&cl=${encodeURIComponent(cl)}`}`);

describe('banners', () => {
  it('removes Server, X-Powered-By and X-AspNet-Version', async () => {
    const res = await get('/a/banners');
    expect(res.status).toBe(200);
    expect(res.headers.server).toBeUndefined();
    expect(res.headers['x-powered-by']).toBeUndefined();
    expect(res.headers['x-aspnet-version']).toBeUndefined();
    expect(res.headers['content-type']).toBe('text/plain');
    expect(res.text).toBe('ok');
  });

  it('banners: pass keeps them', async () => {
    const res = await get('/pass/banners');
    expect(res.headers.server).toBe('Apache/2.4.1 (internal-build-7)');
    expect(res.headers['x-powered-by']).toBe('Express');
    expect(res.headers['x-aspnet-version']).toBe('4.0.30319');
  });
});

describe('5xx bodies', () => {
  it('replaces a stack-trace 500 with the gateway\'s problem, keeping the status and none of the upstream\'s headers', async () => {
    const res = await get('/a/crash');
    expect(res.status).toBe(500);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    const body = res.json();
    expect(body.code).toBe('ERR_UPSTREAM_ERROR');
    expect(body.status).toBe(500);
    expect(body.requestId).toBe(res.headers['x-request-id']);
    expect(res.text).not.toContain('at Object.<anonymous>');
    expect(res.text).not.toContain(INTERNAL_HOST);
    expect(res.text).not.toContain('ECONNREFUSED');
    for (const name of ['etag', 'last-modified', 'content-disposition', 'content-language', 'x-debug-host', 'set-cookie']) expect(res.headers[name], name).toBeUndefined();
    expect(res.headers['content-length']).toBe(String(Buffer.byteLength(res.text)));
    expect(JSON.stringify(res.headers)).not.toContain(INTERNAL_HOST);
    expect(upA.seen.map((s) => s.url)).toEqual(['/base/crash']);
  });

  it('logs the upstream status at warn with the request id, never the body; the access line says ERR_UPSTREAM_ERROR, allowed', async () => {
    const res = await get('/a/crash');
    const reqId = res.headers['x-request-id'] as string;
    const warn = gw.logs.find((l) => l.level === 40 && l.reqId === reqId);
    expect(warn).toMatchObject({ route: 'a', status: 500 });
    expect(JSON.stringify(gw.logs.filter((l) => l.reqId === reqId))).not.toContain(INTERNAL_HOST);
    expect(accessLine(reqId)).toMatchObject({ status: 500, code: 'ERR_UPSTREAM_ERROR', decision: 'allow', route: 'a' });
  });

  it('replaces a 502 and a 503, keeping a 503\'s Retry-After', async () => {
    const bad = await get('/a/bad-gateway');
    expect(bad.status).toBe(502);
    expect(bad.json().code).toBe('ERR_UPSTREAM_ERROR');
    expect(bad.text).not.toContain(INTERNAL_HOST);
    const busy = await get('/a/unavailable');
    expect(busy.status).toBe(503);
    expect(busy.json().code).toBe('ERR_UPSTREAM_ERROR');
    expect(busy.headers['retry-after']).toBe('120');
    expect(busy.text).not.toContain('at Object.<anonymous>');
  });

  it('does not repeat a Retry-After that is neither seconds nor a date', async () => {
    const res = await get(`/a/unavailable?retry=${encodeURIComponent('soon, maybe')}`);
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBeUndefined();
  });

  it('answers HEAD with the status and no body', async () => {
    const res = await get('/a/crash', { method: 'HEAD' });
    expect(res.status).toBe(500);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.text).toBe('');
  });

  it('replaces the 500 of a declined WebSocket handshake too', async () => {
    const key = randomBytes(16).toString('base64');
    const { text } = await exchange(gw.url, [
      `GET /a/ws-crash HTTP/1.1\r\nHost: ${new URL(gw.url).host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ]);
    const [res] = parseResponses(text);
    expect(res!.status).toBe(500);
    expect(JSON.parse(res!.body).code).toBe('ERR_UPSTREAM_ERROR');
    expect(text).not.toContain(INTERNAL_HOST);
    expect(res!.headers.server).toBeUndefined();
  });

  it('answers a status outside 100-599 with 502, once, and nothing of the upstream\'s', async () => {
    const res = await get('/weird/x');
    expect(res.status).toBe(502);
    expect(res.json().code).toBe('ERR_UPSTREAM_UNREACHABLE');
    expect(res.text).not.toContain(INTERNAL_HOST);
    expect(res.headers.server).toBeUndefined();
    expect(gw.logs.filter((l) => l.log === 'access' && l.reqId === res.headers['x-request-id'])).toHaveLength(1);
    // The upstream's answer is not sent after the 502 (Fastify would log that it was).
    expect(gw.logs.filter((l) => /already sent/i.test(JSON.stringify(l)))).toEqual([]);
  });

  it('errorBodies: pass relays the upstream\'s own body and headers', async () => {
    const res = await get('/pass/crash');
    expect(res.status).toBe(500);
    expect(res.text).toBe(STACK);
    expect(res.headers.etag).toBe('"trace-1"');
    const reqId = res.headers['x-request-id'] as string;
    expect(accessLine(reqId)).toMatchObject({ status: 500, decision: 'allow' });
    expect(accessLine(reqId)!.code).toBeUndefined();
  });
});

describe('Location and Content-Location', () => {
  it('rewrites an absolute URL on the upstream\'s origin to the public origin and route prefix, query and fragment kept', async () => {
    const res = await location('/a/redirect', `${upA.url}/base/x?q=1#top`, `${upA.url}/base/doc/7`);
    expect(res.status).toBe(302);
    expect(res.headers.location).toBe(`${gw.url}/a/x?q=1#top`);
    expect(res.headers['content-location']).toBe(`${gw.url}/a/doc/7`);
  });

  it('recognises the upstream origin however it is spelled (scheme and host case, scheme-relative)', async () => {
    const { port } = new URL(upA.url);
    expect((await location('/a/redirect', `HTTP://127.0.0.1:${port}/base/y`)).headers.location).toBe(`${gw.url}/a/y`);
    expect((await location('/a/redirect', `//127.0.0.1:${port}/base/z?k=v`)).headers.location).toBe(`${gw.url}/a/z?k=v`);
  });

  it('maps a path-absolute Location when the route strips its prefix or the upstream has a base path, not otherwise', async () => {
    expect((await location('/a/redirect', '/base/x?q=1')).headers.location).toBe('/a/x?q=1');
    expect((await location('/based/redirect', '/base/based/next')).headers.location).toBe('/based/next');
    expect((await location('/b/redirect', '/x')).headers.location).toBe('/x');
  });

  it('leaves other hosts, other ports and paths outside the base path alone', async () => {
    expect((await location('/a/redirect', 'https://idp.example.com/login?next=%2Fa%2F')).headers.location).toBe('https://idp.example.com/login?next=%2Fa%2F');
    expect((await location('/a/redirect', `${upB.url}/base/x`)).headers.location).toBe(`${upB.url}/base/x`);
    expect((await location('/a/redirect', `${upA.url}/elsewhere`)).headers.location).toBe(`${upA.url}/elsewhere`);
  });

  it('rewrites the origin of the upstream a policy obligation sent the request to', async () => {
    const auth = { authorization: `Bearer ${token}` };
    const to = `${upB.url}/quarantine/held?id=3`;
    const res = await rawRequest(gw.url, `/q/redirect?to=${encodeURIComponent(to)}`, { headers: auth });
    expect(upB.seen.map((s) => s.url)).toEqual([`/quarantine/redirect?to=${encodeURIComponent(to)}`]);
    expect(res.headers.location).toBe(`${gw.url}/q/held?id=3`);
    // The route's own upstream is internal too.
    const own = await rawRequest(gw.url, `/q/redirect?to=${encodeURIComponent(`${upA.url}/base/home`)}`, { headers: auth });
    expect(own.headers.location).toBe(`${gw.url}/q/home`);
    expect((await rawRequest(gw.url, '/q/redirect?to=%2Fquarantine%2Fx', { headers: auth })).headers.location).toBe('/q/x');
  });

  it('redirects: pass leaves them as the upstream wrote them', async () => {
    const res = await location('/pass/redirect', `${upA.url}/base/x?q=1`, '/base/y');
    expect(res.headers.location).toBe(`${upA.url}/base/x?q=1`);
    expect(res.headers['content-location']).toBe('/base/y');
  });
});

describe('cookies', () => {
  it('confines each Set-Cookie to its route: name marked, Path under the prefix, Domain dropped, malformed dropped', async () => {
    const res = await get('/a/cookies');
    expect(setCookies(res)).toEqual([
      'a.sid=abc123; HttpOnly; SameSite=Lax; Path=/a',
      'a.wide=1; Path=/a',
      '__Host-a.sess=xyz; Secure; Path=/',
      'a.q="hello world"; SECURE; Path=/a/sub',
    ]);
    const reqId = res.headers['x-request-id'] as string;
    expect(gw.logs.find((l) => l.level === 20 && l.reqId === reqId && l.msg === 'malformed set-cookie dropped')).toMatchObject({ route: 'a' });
  });

  it('sends a route\'s upstream only its own cookies, under their original names; never another route\'s nor a page\'s', async () => {
    const fromA = pairs(setCookies(await get('/a/cookies')));
    const fromB = pairs(setCookies(await get('/b/cookies')));
    expect(fromB).toContain('b.sid=abc123');
    // Everything the browser holds for the host, plus cookies a page script set without a marker.
    const jar = [...fromA, ...fromB, 'sid=forged', 'theme=dark'].join('; ');
    upA.seen.length = 0;
    upB.seen.length = 0;

    await get('/b/echo', { headers: { cookie: jar } });
    expect(upB.seen[0]!.cookie).toBe('sid=abc123; wide=1; __Host-sess=xyz; q="hello world"');

    await get('/a/echo', { headers: { cookie: jar } });
    expect(upA.seen[0]!.cookie).toBe('sid=abc123; wide=1; __Host-sess=xyz; q="hello world"');

    // Route A's cookies replayed alone to route B (its exact Set-Cookie name=value), and a page's own: no Cookie at all.
    await get('/b/echo', { headers: { cookie: [...fromA, 'sid=forged'].join('; ') } });
    expect(upB.seen[1]!.cookie).toBeUndefined();
    await get('/a/echo', { headers: { cookie: 'sid=forged; b.sid=abc123' } });
    expect(upA.seen[1]!.cookie).toBeUndefined();
  });

  it('keeps a Domain equal to cookieDomain or under it, and drops any other', async () => {
    const res = await get('/dom/domain-cookies');
    expect(setCookies(res)).toEqual(['dom.in=1; Domain=.example.com; Path=/dom', 'dom.sub=1; Domain=App.Example.COM; Path=/dom', 'dom.out=1; Path=/dom']);
  });

  it('scopes the cookies of a WebSocket handshake and its 101 like any request\'s', async () => {
    const key = randomBytes(16).toString('base64');
    const { text } = await exchange(gw.url, [
      `GET /a/socket HTTP/1.1\r\nHost: ${new URL(gw.url).host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nCookie: a.sid=1; b.sid=2; sid=forged\r\n\r\n`,
    ]);
    const [res] = parseResponses(text);
    expect(res!.status).toBe(101);
    expect(upA.seen[0]!.cookie).toBe('sid=1');
    expect(res!.headers['set-cookie']).toBe('a.ws=1; Path=/a');
    expect(res!.headers.server).toBeUndefined();
    expect(res!.headers['x-powered-by']).toBeUndefined();
    expect(res!.headers['strict-transport-security']).toBeUndefined();
  });

  it('cookies: pass leaves both directions unchanged', async () => {
    const res = await get('/pass/cookies');
    expect(setCookies(res)).toEqual(UPSTREAM_COOKIES);
    await get('/pass/echo', { headers: { cookie: 'sid=1; b.sid=2' } });
    expect(upA.seen[1]!.cookie).toBe('sid=1; b.sid=2');
    // And the 101 of a handshake on that route.
    const key = randomBytes(16).toString('base64');
    const { text } = await exchange(gw.url, [
      `GET /pass/socket HTTP/1.1\r\nHost: ${new URL(gw.url).host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ]);
    const [ws] = parseResponses(text);
    expect(ws!.headers['set-cookie']).toBe('ws=1; Path=/');
    expect(ws!.headers.server).toBe('internal-ws/1.0');
  });
});

describe('host-wide headers', () => {
  const HOST_WIDE = ['strict-transport-security', 'access-control-allow-origin', 'access-control-allow-credentials', 'access-control-expose-headers', 'clear-site-data', 'alt-svc', 'nel', 'report-to', 'reporting-endpoints', 'service-worker-allowed'];
  const OBSOLETE = ['public-key-pins', 'public-key-pins-report-only', 'expect-ct'];

  it('drops HSTS max-age=0, reflected CORS with credentials, Clear-Site-Data, Alt-Svc, reporting and pinning headers', async () => {
    const res = await get('/b/hostwide', { headers: { origin: 'https://evil.test' } });
    expect(res.status).toBe(200);
    for (const name of [...HOST_WIDE, ...OBSOLETE]) expect(res.headers[name], name).toBeUndefined();
    expect(res.headers['x-custom']).toBe('kept');
  });

  it('passes each group from a route that owns it; pinning headers never', async () => {
    const res = await get('/own/hostwide', { headers: { origin: 'https://app.example.com' } });
    expect(res.headers['strict-transport-security']).toBe('max-age=0');
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(res.headers['access-control-allow-credentials']).toBe('true');
    for (const name of HOST_WIDE) expect(res.headers[name], name).toBeDefined();
    for (const name of OBSOLETE) expect(res.headers[name], name).toBeUndefined();
  });

  it('setHeaders replaces the upstream\'s values, on relayed responses and on a replaced 5xx', async () => {
    const res = await get('/set/hostwide');
    expect(res.headers['strict-transport-security']).toBe('max-age=63072000; includeSubDomains');
    expect(res.headers['content-security-policy']).toBe("default-src 'none'");
    const banners = await get('/set/banners');
    expect(banners.headers.server).toBe('zt-gateway');
    const crash = await get('/set/crash');
    expect(crash.json().code).toBe('ERR_UPSTREAM_ERROR');
    expect(crash.headers['strict-transport-security']).toBe('max-age=63072000; includeSubDomains');
    // Not on routes without them.
    expect((await get('/b/banners')).headers['content-security-policy']).toBeUndefined();
  });
});

describe('responses without content', () => {
  it('relays a 304 with Content-Length as a 304, and the connection stays usable', async () => {
    const host = new URL(gw.url).host;
    const { text } = await exchange(gw.url, [`GET /a/not-modified HTTP/1.1\r\nHost: ${host}\r\n\r\nGET /a/banners HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`]);
    const [notModified, next] = parseResponses(text);
    expect(notModified!.status).toBe(304);
    expect(notModified!.headers['content-length']).toBe('42');
    expect(notModified!.headers.etag).toBe('"v1"');
    expect(notModified!.body).toBe('');
    expect(next!.status).toBe(200);
    expect(next!.body).toBe('ok');
    const reqId = notModified!.headers['x-request-id']!;
    expect(accessLine(reqId)).toMatchObject({ status: 304, decision: 'allow' });
    expect(accessLine(reqId)!.code).toBeUndefined();
  });

  it('relays a HEAD answer with its Content-Length and no body', async () => {
    const res = await get('/a/sized', { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers['content-length']).toBe('42');
    expect(res.text).toBe('');
    expect((await get('/a/sized')).text).toBe('x'.repeat(42));
  });

  it('relays a 204 without Content-Length, even when the upstream sent one', async () => {
    const res = await get('/a/nocontent');
    expect(res.status).toBe(204);
    expect(res.headers['content-length']).toBeUndefined();
    const { text } = await exchange(gw.url, [`GET /raw/x HTTP/1.1\r\nHost: ${new URL(gw.url).host}\r\nConnection: close\r\n\r\n`]);
    const [bad] = parseResponses(text);
    expect(bad!.status).toBe(204);
    expect(bad!.headers['content-length']).toBeUndefined();
    expect(bad!.headers['x-kept']).toBe('yes');
  });
});
