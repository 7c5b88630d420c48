// Upgrades as an attacker sends them (h2csmuggler, Burp's request smuggler), on raw sockets:
// only an RFC 6455 handshake on a websocket route may become a tunnel, after the same
// pipeline as a plain request; nothing else the client sends on that connection may reach
// an upstream the policy did not see.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { exchange, parseResponses, startRawUpstream, waitFor, type RawUpstream } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';

// The policy lets anyone read /code/public and nothing else on the code route.
const POLICY = `apiVersion: zt-gateway/v1
name: code-public-only
appliesTo: { routes: [code] }
rules:
  - name: public-part
    effect: allow
    when: 'request.path.startsWith("/code/public/")'
`;
const OTHER_ROUTES = `apiVersion: zt-gateway/v1
name: everyone-elsewhere
appliesTo: { routes: [echo, nows, decline-length, decline-chunked, decline-close, evil-ws, evil-plain, bad-accept] }
rules:
  - name: anyone
    effect: allow
    when: 'true'
`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let token: string;
const upstreams: Record<string, RawUpstream> = {};

const BODY = '{"why":"not for you"}';
const declineWith = {
  length: () => `HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nX-Upstream: yes\r\nKeep-Alive: timeout=99\r\nConnection: keep-alive, x-secret-hop\r\nX-Secret-Hop: 1\r\n\r\n${BODY}`,
  chunked: () => `HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n${BODY.slice(0, 5)}\r\n${(BODY.length - 5).toString(16)}\r\n${BODY.slice(5)}\r\n0\r\n\r\n`,
  close: () => `HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${BODY}`,
};
// Answers 101 to anything, speaking whatever the client asked for: the upstream a smuggler hopes for.
const switchAnything = (received: string) => {
  const upgrade = /^upgrade: *(.*)$/im.exec(received)?.[1]?.trim() ?? 'h2c';
  return `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n\r\n`;
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-upgrade-'));
  writeFileSync(join(dir, 'code.yaml'), POLICY);
  writeFileSync(join(dir, 'other.yaml'), OTHER_ROUTES);
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  upstreams.length = await startRawUpstream(declineWith.length);
  upstreams.chunked = await startRawUpstream(declineWith.chunked);
  upstreams.close = await startRawUpstream(declineWith.close, { end: true });
  upstreams.evil = await startRawUpstream(switchAnything);
  upstreams.badAccept = await startRawUpstream(() => 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n');
  const u = upstreams;
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url, websocket: true },
      { name: 'nows', pathPrefix: '/nows/', upstream: echo.url },
      { name: 'code', pathPrefix: '/code/', upstream: echo.url, websocket: true },
      { name: 'decline-length', pathPrefix: '/decline-length/', upstream: u.length!.url, websocket: true },
      { name: 'decline-chunked', pathPrefix: '/decline-chunked/', upstream: u.chunked!.url, websocket: true },
      { name: 'decline-close', pathPrefix: '/decline-close/', upstream: u.close!.url, websocket: true },
      { name: 'evil-ws', pathPrefix: '/evil-ws/', upstream: u.evil!.url, websocket: true },
      { name: 'evil-plain', pathPrefix: '/evil-plain/', upstream: u.evil!.url },
      { name: 'bad-accept', pathPrefix: '/bad-accept/', upstream: u.badAccept!.url, websocket: true },
    ],
    policies: { dir },
  });
  token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  for (const u of Object.values(upstreams)) await u.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  echo.requests.length = 0;
  for (const u of Object.values(upstreams)) u.connections.length = 0;
});

const host = () => new URL(gw.url).host;
/** At least one whole response arrived. */
const complete = (text: string): boolean => {
  try {
    return parseResponses(text).length > 0;
  } catch {
    return false;
  }
};
const wsKey = () => randomBytes(16).toString('base64');

/** A request head; `headers` lines are sent exactly as written. */
function head(method: string, target: string, headers: readonly string[], withToken = true): string {
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${host()}`, ...(withToken ? [`Authorization: Bearer ${token}`] : []), ...headers];
  return lines.join('\r\n') + '\r\n\r\n';
}

const handshake = (key = wsKey()) => ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13'];

/** Nothing reached any upstream but what `allowed` lets through. */
function upstreamSaw(): { echo: string[]; raw: number } {
  return { echo: echo.requests.map((r) => r.url), raw: Object.values(upstreams).reduce((n, u) => n + u.connections.length, 0) };
}

describe('h2c and other non-WebSocket upgrades: served as plain HTTP, never a tunnel', () => {
  const h2cVariants = [
    ['Upgrade: h2c', 'Connection: Upgrade, HTTP2-Settings', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA'],
    ['Upgrade: H2C', 'Connection: upgrade'],
    ['upgrade: h2c', 'connection: HTTP2-Settings, Upgrade', 'http2-settings: AAMAAABk'],
    ['Upgrade:  h2c ', 'Connection: keep-alive, Upgrade'],
    ['Upgrade: TLS/1.2, HTTP/1.1', 'Connection: Upgrade'],
    ['Upgrade: made-up-protocol/7', 'Connection: Upgrade'],
    ['Upgrade: websocketx', 'Connection: Upgrade'],
  ];
  for (const variant of h2cVariants) {
    it(`${variant[0]}: the request reaches the upstream once, as plain HTTP; what the client smuggles after it never does`, async () => {
      // Then the attack proper: an HTTP/1.1 request and an HTTP/2 preface for a path the policy denies.
      const smuggled = head('GET', '/code/admin/secret', []) + 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
      const res = await exchange(gw.url, [
        head('GET', '/code/public/x', variant) + smuggled,
        async (received) => {
          await waitFor(received, (s) => s.includes('\r\n\r\n'));
          return smuggled; // and once more after the answer, in case the tunnel opened late
        },
      ]);
      const [first, ...more] = parseResponses(res.text);
      expect(first!.status).toBe(200);
      expect(first!.headers.connection).toBe('close');
      expect(first!.headers.upgrade).toBeUndefined();
      expect(more.filter((r) => r.status < 400)).toEqual([]);
      expect(res.closed).toBe(true);
      expect(upstreamSaw().echo).toEqual(['/code/public/x']);
      const seen = echo.requests[0]!.headers;
      expect(seen.upgrade).toBeUndefined();
      expect(seen.connection).not.toMatch(/upgrade/i);
      expect(seen['http2-settings']).toBeUndefined();
    });
  }

  it('refuses a denied path asked for with h2c exactly as without it', async () => {
    const res = await exchange(gw.url, [head('GET', '/code/admin/x', ['Upgrade: h2c', 'Connection: Upgrade, HTTP2-Settings', 'HTTP2-Settings: AAMAAABk'])]);
    const [first] = parseResponses(res.text);
    expect(first!.status).toBe(403);
    expect(JSON.parse(first!.body).code).toBe('ERR_ACCESS_DENIED');
    expect(upstreamSaw().echo).toEqual([]);
  });

  it('never relays a 101 to a plain request: an upstream that switches anyway does not get a tunnel', async () => {
    const res = await exchange(gw.url, [
      head('GET', '/evil-plain/x', ['Upgrade: h2c', 'Connection: Upgrade, HTTP2-Settings', 'HTTP2-Settings: AAMAAABk']) + 'GET /evil-plain/smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
    ]);
    const [first] = parseResponses(res.text);
    expect(first!.status).not.toBe(101);
    expect(first!.status).toBeGreaterThanOrEqual(500);
    expect(upstreams.evil!.connections.join('')).not.toContain('smuggled');
    expect(upstreams.evil!.connections.join('')).not.toMatch(/^upgrade:/im);
  });

  it('carries a body of a POST with Upgrade as a plain POST body', async () => {
    const res = await exchange(gw.url, [head('POST', '/echo/up', ['Upgrade: h2c', 'Connection: Upgrade', 'Content-Type: text/plain', 'Content-Length: 5']) + 'hello' + head('GET', '/echo/smuggled', [])]);
    const [first] = parseResponses(res.text);
    expect(first!.status).toBe(200);
    expect(JSON.parse(first!.body).body).toBe('hello');
    expect(upstreamSaw().echo).toEqual(['/echo/up']);
  });
});

describe('WebSocket handshakes', () => {
  const refused = async (target: string, headers: readonly string[], withToken = true, extra = '', method = 'GET') => {
    const res = await exchange(gw.url, [head(method, target, headers, withToken) + extra]);
    const responses = parseResponses(res.text);
    expect(responses).toHaveLength(1);
    expect(res.closed).toBe(true);
    const [r] = responses;
    expect(r!.headers['content-type']).toBe('application/problem+json');
    const body = JSON.parse(r!.body);
    expect(body.requestId).toBe(r!.headers['x-request-id']);
    return { status: r!.status, code: body.code as string, headers: r!.headers };
  };

  it('relays a valid handshake after authentication, both ways', async () => {
    const ws = new WebSocket(`${gw.url.replace('http:', 'ws:')}/echo/socket?x=1`, { headers: { authorization: `Bearer ${token}` } });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const reply = new Promise<string>((resolve) => ws.once('message', (m) => resolve(m.toString())));
    ws.send('ping');
    expect(await reply).toBe('ping');
    ws.close();
    expect(echo.requests[0]!.url).toBe('/echo/socket?x=1');
    expect(echo.requests[0]!.headers.upgrade).toBe('websocket');
  });

  const malformed: [string, string[]][] = [
    ['version 8', ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${wsKey()}`, 'Sec-WebSocket-Version: 8']],
    ['no version', ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${wsKey()}`]],
    ['two versions', ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${wsKey()}`, 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Version: 8']],
    ['no key', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13']],
    ['short key', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: c2hvcnQ=', 'Sec-WebSocket-Version: 13']],
    ['17-byte key', ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${randomBytes(17).toString('base64')}`, 'Sec-WebSocket-Version: 13']],
    ['two keys', ['Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${wsKey()}`, `Sec-WebSocket-Key: ${wsKey()}`, 'Sec-WebSocket-Version: 13']],
    ['a body', [...handshake(), 'Content-Length: 4']],
    ['chunked', [...handshake(), 'Transfer-Encoding: chunked']],
    ['websocket among others', ['Upgrade: h2c, websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13']],
  ];
  for (const [name, headers] of malformed) {
    it(`refuses a handshake with ${name} (400), and nothing reaches the upstream`, async () => {
      const r = await refused('/echo/socket', headers, true, 'GET /echo/smuggled HTTP/1.1\r\n\r\n');
      expect(r.status).toBe(400);
      expect(r.code).toBe('ERR_BAD_REQUEST');
      if (name.includes('version')) expect(r.headers['sec-websocket-version']).toBe('13');
      expect(upstreamSaw()).toEqual({ echo: [], raw: 0 });
    });
  }

  for (const method of ['POST', 'PUT', 'CONNECT']) {
    it(`refuses ${method} with Upgrade: websocket (400)`, async () => {
      const r = await refused('/echo/socket', [...handshake(), ...(method === 'CONNECT' ? [] : ['Content-Length: 0'])], true, '', method);
      expect(r.status).toBe(400);
      expect(upstreamSaw()).toEqual({ echo: [], raw: 0 });
    });
  }

  it('does not relay Upgrade: websocket without Connection: upgrade: a plain GET reaches the upstream, without Upgrade', async () => {
    const key = wsKey();
    const res = await exchange(gw.url, [head('GET', '/echo/socket', ['Upgrade: websocket', 'Connection: close', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13'])]);
    const [first] = parseResponses(res.text);
    expect(first!.status).toBe(200);
    expect(echo.requests).toHaveLength(1);
    expect(echo.requests[0]!.headers.upgrade).toBeUndefined();
  });

  it('refuses a valid handshake on a route without websocket: true (400)', async () => {
    const r = await refused('/nows/socket', handshake());
    expect(r).toMatchObject({ status: 400, code: 'ERR_BAD_REQUEST' });
    expect(upstreamSaw()).toEqual({ echo: [], raw: 0 });
  });

  it('refuses a handshake without a token (401), or with a bad one, before anything reaches the upstream', async () => {
    expect(await refused('/echo/socket', handshake(), false)).toMatchObject({ status: 401, code: 'ERR_MISSING_TOKEN' });
    expect(await refused('/echo/socket', [...handshake(), 'Authorization: Bearer x.y.z'], false)).toMatchObject({ status: 401, code: 'ERR_INVALID_TOKEN' });
    expect(upstreamSaw()).toEqual({ echo: [], raw: 0 });
  });

  it('runs the policy: a handshake to a denied path gets 403, one to an allowed path opens', async () => {
    expect(await refused('/code/admin/socket', handshake())).toMatchObject({ status: 403, code: 'ERR_ACCESS_DENIED' });
    expect(echo.requests).toHaveLength(0);
    const ws = new WebSocket(`${gw.url.replace('http:', 'ws:')}/code/public/socket`, { headers: { authorization: `Bearer ${token}` } });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    ws.close();
  });

  const paths = ['/echo/./a//b/../c', '/echo/ok%2Dx', '/echo/..;/x', '/echo/.;/x', '/echo/%2e%2e/admin', '/echo/%2E%2E/nows/x', '/echo/../nows/x', '/echo/a/../../nows/x', '/echo/..%2fnows/x', '/echo/%252e%252e/x', '/echo\\..\\nows', '/nowhere/x', '/echo/%zz', '/code/public/../admin/x'];
  for (const path of paths) {
    it(`refuses the handshake to ${path} exactly as the plain request (status and code), same path to the upstream`, async () => {
      const plain = await rawRequest(gw.url, path, { headers: { authorization: `Bearer ${token}` } });
      const plainCode = plain.status >= 400 ? plain.json().code : undefined;
      const plainSaw = echo.requests.map((r) => r.url);
      echo.requests.length = 0;
      const res = await exchange(gw.url, [head('GET', path, handshake())], { deadlineMs: 1500 });
      const [r] = parseResponses(res.text);
      if (plain.status >= 400) {
        expect({ status: r!.status, code: JSON.parse(r!.body).code }).toEqual({ status: plain.status, code: plainCode });
        expect(echo.requests).toHaveLength(0);
      } else {
        // Allowed as a plain request: then the handshake reaches the upstream over the very same path.
        expect(r!.status).toBe(101);
        expect(echo.requests.map((q) => q.url)).toEqual(plainSaw);
      }
    });
  }
});

describe('an upstream that declines, or switches to something else', () => {
  for (const kind of ['length', 'chunked', 'close'] as const) {
    it(`relays a 403 with a body (${kind}) as valid HTTP, then closes; bytes the client sent after it never reach the upstream`, async () => {
      const key = wsKey();
      const res = await exchange(gw.url, [
        head('GET', `/decline-${kind}/socket`, handshake(key)) + 'GET /decline-smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
        async (received) => {
          await waitFor(received, complete);
          return 'GET /decline-after HTTP/1.1\r\nHost: x\r\n\r\n';
        },
      ]);
      const responses = parseResponses(res.text);
      expect(responses).toHaveLength(1);
      const [r] = responses;
      expect(r!.status).toBe(403);
      expect(r!.body).toBe(BODY);
      expect(r!.framing).toBe(kind === 'length' ? 'length' : 'chunked');
      expect(r!.headers.connection).toBe('close');
      expect(r!.headers['keep-alive']).toBeUndefined();
      expect(r!.headers['x-secret-hop']).toBeUndefined();
      expect(r!.headers['x-request-id']).toMatch(/\S/);
      expect(res.closed).toBe(true);
      const seen = upstreams[kind]!.connections;
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatch(/^GET \/decline-\w+\/socket HTTP\/1\.1\r\n/);
      expect(seen[0]).not.toContain('decline-smuggled');
      expect(seen[0]).not.toContain('decline-after');
      expect(seen[0]!.endsWith('\r\n\r\n')).toBe(true);
    });
  }

  it('never tunnels a 101 that is not WebSocket, or not for this key: 502, upstream connection closed', async () => {
    for (const prefix of ['/evil-ws/', '/bad-accept/']) {
      const res = await exchange(gw.url, [head('GET', `${prefix}socket`, handshake()) + 'GET /tunnelled HTTP/1.1\r\n\r\n']);
      const responses = parseResponses(res.text);
      expect(responses.map((r) => r.status)).toEqual([502]);
      expect(res.closed).toBe(true);
    }
    for (const u of [upstreams.evil!, upstreams.badAccept!]) expect(u.connections.join('')).not.toContain('tunnelled');
  });
});

describe('pipelined bytes after a refused upgrade', () => {
  it('never reach an upstream, whether in the same packet or after the answer', async () => {
    const next = head('GET', '/echo/pipelined', []);
    const res = await exchange(gw.url, [
      head('GET', '/echo/socket', handshake(), false) + next,
      async (received) => {
        await waitFor(received, (s) => s.includes('\r\n\r\n'));
        return next;
      },
    ]);
    expect(parseResponses(res.text).map((r) => r.status)).toEqual([401]);
    expect(res.closed).toBe(true);
    expect(upstreamSaw()).toEqual({ echo: [], raw: 0 });
  });
});

describe('observability of upgrades', () => {
  it('writes an access line for each upgrade, opened or refused, without the query, and counts it', async () => {
    const ws = new WebSocket(`${gw.url.replace('http:', 'ws:')}/echo/socket?access_token=SECRET1`, { headers: { authorization: `Bearer ${token}` } });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    ws.close();
    await exchange(gw.url, [head('GET', '/echo/socket?access_token=SECRET2', handshake(), false)]);
    await exchange(gw.url, [head('GET', '/echo/%2e%2e/x?access_token=SECRET3', handshake())]);
    const lines = gw.logs.filter((l) => l.msg === 'access' && l.upgrade === 'websocket');
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ status: 101, path: '/echo/socket', route: 'echo', sub: 'alice', decision: 'allow' }),
        expect.objectContaining({ status: 401, path: '/echo/socket', code: 'ERR_MISSING_TOKEN', decision: 'deny' }),
        expect.objectContaining({ status: 400, path: '/echo/%2e%2e/x', code: 'ERR_BAD_PATH' }),
      ]),
    );
    expect(JSON.stringify(gw.logs)).not.toMatch(/SECRET[123]/);
    const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
    expect(metrics).toMatch(/ztgw_requests_total\{route="echo",status="101",decision="allow"\} [1-9]/);
    expect(metrics).toMatch(/ztgw_auth_failures_total\{reason="ERR_MISSING_TOKEN"\} [1-9]/);
  });

  it('counts 403 refusals by code, so denies can be alerted on', async () => {
    await rawRequest(gw.url, '/code/admin/x', { headers: { authorization: `Bearer ${token}` } });
    const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
    expect(metrics).toMatch(/ztgw_auth_failures_total\{reason="ERR_ACCESS_DENIED"\} [1-9]/);
  });
});
