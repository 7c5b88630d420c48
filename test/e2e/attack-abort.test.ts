// Clients that leave, methods the gateway does not route, upgrades without Connection: upgrade,
// and log lines on a quiet gateway, on raw sockets:
// - a client that closes mid-body (chunked or Content-Length), or while the upstream works,
//   frees the upstream connection at once and gets a 499 access line, never an upstream error;
// - TRACE, PROPFIND, PURGE, … get 405 with Allow, logged with their code, never counted "allow";
// - an Upgrade that is not relayed as a WebSocket ends its connection, and nothing pipelined
//   behind it, nor its HTTP2-Settings, reaches the upstream;
// - a single decision line reaches its file within about a second on an idle gateway.
import net from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { RequestTimeoutError } from '../../src/core/errors.ts';
import { toProblem } from '../../src/observability/problem.ts';
import { exchange, parseResponses } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';
const MAX_BODY = 64 * 1024;

const POLICY = `apiVersion: zt-gateway/v1
name: no-private
appliesTo: { routes: [echo, hold] }
rules:
  - name: not-private
    effect: allow
    when: '!request.path.startsWith("/echo/private")'
`;

/**
 * An upstream that reads everything and never answers. `busy()` counts its open connections
 * that carry a request; undici may also open idle pool connections, which hold nothing.
 */
async function startHoldingUpstream() {
  const open = new Map<net.Socket, number>();
  let received = '';
  const server = net.createServer((socket) => {
    open.set(socket, 0);
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      received += d;
      open.set(socket, (open.get(socket) ?? 0) + d.length);
    });
    socket.on('error', () => {});
    socket.on('close', () => open.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    busy: () => [...open.values()].filter((n) => n > 0).length,
    received: () => received,
    reset: () => void (received = ''),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open.keys()) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function until(test: () => boolean, what: string, deadlineMs = 5_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!test()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let hold: Awaited<ReturnType<typeof startHoldingUpstream>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let token: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-abort-'));
  writeFileSync(join(dir, 'echo.yaml'), POLICY);
  echo = await startEchoServer();
  hold = await startHoldingUpstream();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway(
    {
      server: { limits: { maxBodyBytes: MAX_BODY } },
      identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
      routes: [
        { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
        // The route timeout is far longer than the test: only the client's leaving can free the connection.
        { name: 'hold', pathPrefix: '/hold/', upstream: hold.url, timeoutMs: 600_000 },
      ],
      policies: { dir, decisionLog: { file: 'decisions.log' } },
    },
    { dir },
  );
  token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await hold?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  echo.requests.length = 0;
});

const host = () => new URL(gw.url).host;

async function metric(pattern: RegExp): Promise<number> {
  const text = (await rawRequest(gw.adminUrl, '/metrics')).text;
  return text
    .split('\n')
    .filter((l) => pattern.test(l))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

describe('a client that leaves before its answer', () => {
  const N = 10;
  const variants: [string, (i: number) => string][] = [
    ['mid-body, chunked', (i) => `POST /hold/c${i} HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n`],
    ['mid-body, Content-Length', (i) => `POST /hold/l${i} HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nContent-Length: 100\r\n\r\nhe`],
    ['while the upstream works', (i) => `GET /hold/g${i} HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\n\r\n`],
  ];
  for (const [name, request] of variants) {
    it(`${name}: the upstream connection is released within a second or so, and the request is logged as 499, not as an upstream error`, async () => {
      const logsBefore = gw.logs.length;
      const errorsBefore = await metric(/^ztgw_upstream_errors_total/);
      hold.reset();
      expect(hold.busy()).toBe(0);
      const sockets: net.Socket[] = [];
      for (let i = 0; i < N; i++) {
        const socket = net.connect(Number(new URL(gw.url).port), '127.0.0.1');
        socket.on('error', () => {});
        socket.write(request(i));
        sockets.push(socket);
      }
      await until(() => hold.busy() >= N && (hold.received().match(/\/hold\//g) ?? []).length >= N, `${N} requests upstream`, 10_000);
      for (const s of sockets) s.destroy();
      // Without the defence these stay open until the upstream's own timeout (minutes).
      await until(() => hold.busy() === 0, `upstream connections to close (${hold.busy()} busy)`, 3_000);
      await until(() => gw.logs.slice(logsBefore).filter((l) => l.msg === 'access').length >= N, 'access lines');
      const lines = gw.logs.slice(logsBefore);
      const access = lines.filter((l) => l.msg === 'access');
      expect(access).toHaveLength(N);
      for (const l of access) expect(l).toMatchObject({ status: 499, code: 'ERR_CLIENT_CLOSED_REQUEST', route: 'hold', sub: 'alice' });
      expect(lines.filter((l) => l.msg === 'upstream error')).toEqual([]);
      expect(JSON.stringify(lines)).not.toMatch(/FST_ERR_REP_ALREADY_SENT|ERR_UPSTREAM/);
      expect(await metric(/^ztgw_upstream_errors_total/)).toBe(errorsBefore);
      expect(await metric(/^ztgw_requests_total\{route="hold",status="499"/)).toBeGreaterThanOrEqual(N);
    }, 20_000);
  }
});

describe('a chunked body that outgrows the limit while it streams', () => {
  it('still gets its 413 (the limit is not mistaken for a client leaving), and the upstream request is cut', async () => {
    hold.reset();
    const chunk = 'x'.repeat(16 * 1024);
    const head = `POST /hold/big HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const parts: (string | ((received: () => string) => Promise<undefined>))[] = [head + `${chunk.length.toString(16)}\r\n${chunk}\r\n`];
    // The first chunk reaches the upstream before the body outgrows the limit.
    parts.push(async () => (await until(() => hold.received().includes('x'.repeat(1024)), 'the body streaming upstream', 10_000), undefined));
    for (let i = 0; i < 5; i++) parts.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
    parts.push(async (received) => (await until(() => received().includes('"requestId"'), 'the answer', 10_000), undefined));
    const res = await exchange(gw.url, parts, { deadlineMs: 50 });
    const [r] = parseResponses(res.text);
    expect(r!.status).toBe(413);
    expect(JSON.parse(r!.body).code).toBe('ERR_PAYLOAD_TOO_LARGE');
    await until(() => hold.busy() === 0, 'the upstream request to be cut', 3_000);
    await until(() => gw.logs.some((l) => l.msg === 'access' && l.path === '/hold/big'), 'the access line');
    expect(gw.logs.find((l) => l.msg === 'access' && l.path === '/hold/big')).toMatchObject({ status: 413, code: 'ERR_PAYLOAD_TOO_LARGE' });
  }, 20_000);
});

describe('methods the gateway does not route', () => {
  for (const method of ['TRACE', 'PROPFIND', 'MKCOL', 'LINK', 'SEARCH', 'PURGE', 'M-SEARCH', 'SOURCE', 'LOCK', 'REPORT']) {
    it(`answers ${method} with 405, Allow and a problem; logged with its code, never counted as allow`, async () => {
      const res = await exchange(gw.url, [`${method} /echo/x HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`]);
      const [r] = parseResponses(res.text);
      expect(r!.status).toBe(405);
      expect(r!.headers.allow).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
      expect(r!.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
      const body = JSON.parse(r!.body);
      expect(body.code).toBe('ERR_METHOD_NOT_ALLOWED');
      expect(echo.requests).toHaveLength(0);
      await until(() => gw.logs.some((l) => l.msg === 'access' && l.reqId === body.requestId), 'the access line');
      expect(gw.logs.find((l) => l.msg === 'access' && l.reqId === body.requestId)).toMatchObject({
        status: 405,
        method,
        code: 'ERR_METHOD_NOT_ALLOWED',
        decision: 'error',
      });
    });
  }

  it('never counts a refusal as allow', async () => {
    await exchange(gw.url, [`TRACE / HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`]);
    expect(await metric(/^ztgw_requests_total\{[^}]*status="405",decision="allow"/)).toBe(0);
    expect(await metric(/^ztgw_requests_total\{[^}]*status="405",decision="error"/)).toBeGreaterThan(0);
  });
});

describe('Upgrade without Connection: upgrade', () => {
  const smuggled = (h: string) => `GET /echo/private/smuggled HTTP/1.1\r\nHost: ${h}\r\nAuthorization: Bearer ${token}\r\n\r\n`;
  const variants: [string, string[]][] = [
    ['h2c with HTTP2-Settings', ['Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA']],
    ['h2c with Connection: HTTP2-Settings only', ['Upgrade: h2c', 'HTTP2-Settings: AAA', 'Connection: HTTP2-Settings']],
    ['websocket without Connection', ['Upgrade: websocket', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13']],
    ['websocket with Connection: keep-alive', ['Upgrade: websocket', 'Connection: keep-alive', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==']],
    ['a made-up protocol', ['upgrade: foo/1']],
  ];
  for (const [name, lines] of variants) {
    it(`${name}: served as plain HTTP, the connection ends, a pipelined request never reaches the upstream`, async () => {
      const head = `GET /echo/ok HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`;
      const res = await exchange(gw.url, [head + smuggled(host())]);
      expect(res.closed).toBe(true);
      const responses = parseResponses(res.text);
      expect(responses[0]!.status).toBe(200);
      expect(responses.slice(1).every((r) => r.status === 400)).toBe(true);
      expect(echo.requests.map((r) => r.url)).toEqual(['/echo/ok']);
      const seen = echo.requests[0]!.headers;
      for (const h of ['upgrade', 'http2-settings', 'sec-websocket-key', 'sec-websocket-version']) expect(seen[h]).toBeUndefined();
    });
  }

  it('ends the connection after a refusal outside the pipeline too (405)', async () => {
    const res = await exchange(gw.url, [`TRACE /echo/ok HTTP/1.1\r\nHost: ${host()}\r\nUpgrade: h2c\r\n\r\n` + smuggled(host())]);
    expect(res.closed).toBe(true);
    expect(parseResponses(res.text)[0]!.status).toBe(405);
    expect(echo.requests).toHaveLength(0);
  });
});

describe('log lines on a quiet gateway', () => {
  it('a single decision line reaches its file within about a second, without waiting for more lines', async () => {
    const file = join(dir, 'decisions.log');
    const res = await rawRequest(gw.url, '/echo/private/flush-me', { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(403);
    const id = String(res.headers['x-request-id']);
    await until(() => existsSync(file) && readFileSync(file, 'utf8').includes(id), 'the decision line in its file', 3_000);
  });
});

describe('the admin plane without Host', () => {
  it('refuses an HTTP/1.1 request without Host with a 400 problem document, not a bare 400', async () => {
    const res = await exchange(gw.adminUrl, ['GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n']);
    const [r] = parseResponses(res.text);
    expect(r!.status).toBe(400);
    expect(r!.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    const body = JSON.parse(r!.body);
    expect(body).toMatchObject({ status: 400, code: 'ERR_BAD_REQUEST' });
    expect(r!.headers['x-request-id']).toBe(body.requestId);
  });

  it('still answers HTTP/1.0 without Host, and HTTP/1.1 with it', async () => {
    const old = parseResponses((await exchange(gw.adminUrl, ['GET /healthz HTTP/1.0\r\n\r\n'])).text.replace(/^HTTP\/1\.0/, 'HTTP/1.1'));
    expect(old[0]!.status).toBe(200);
    const res = await exchange(gw.adminUrl, [`GET /healthz HTTP/1.1\r\nHost: ${new URL(gw.adminUrl).host}\r\nConnection: close\r\n\r\n`]);
    expect(parseResponses(res.text)[0]!.status).toBe(200);
  });
});

describe('the 408 problem', () => {
  it('does not claim the request was never forwarded: a slow body may be cut off mid-stream', () => {
    const { detail } = toProblem(new RequestTimeoutError('client too slow'), 'id').body;
    expect(detail).not.toMatch(/^The request was not received in time and was not forwarded\.$/);
    expect(detail).toMatch(/not forwarded, or its forwarding was cut off/);
  });
});
