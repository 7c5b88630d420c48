// What Node's parser and Fastify refuse before any route runs, on raw sockets: every refusal is
// an application/problem+json document with a stable code and the request id, on both planes,
// and gets an access line and a count like any other request. And Expect: 100-continue: the
// client is invited to upload only after authentication and policy passed.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { exchange, parseResponses, waitFor, type ParsedResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';
const MAX_BODY = 4 * 1024 * 1024;

const POLICY = `apiVersion: zt-gateway/v1
name: no-private
appliesTo: { routes: [echo] }
rules:
  - name: not-private
    effect: allow
    when: '!request.path.startsWith("/echo/private")'
`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let token: string;
const ADMIN_TOKEN = 'framing-test-admin-token-0123456789abcdef';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-framing-'));
  writeFileSync(join(dir, 'echo.yaml'), POLICY);
  writeFileSync(join(dir, 'admin-token'), ADMIN_TOKEN); // profiling needs the admin token
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    server: { profiling: true, admin: { tokenFile: join(dir, 'admin-token') }, limits: { maxBodyBytes: MAX_BODY, maxHeaderBytes: 4096 }, timeouts: { headersMs: 1000, requestMs: 2000 } },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
    policies: { dir },
  });
  token = await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' });
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

const host = () => new URL(gw.url).host;

/** The one response to `bytes`, which must be a problem document quoting its request id; the connection must close. */
async function problemFor(url: string, bytes: string): Promise<ParsedResponse & { json: any }> {
  const res = await exchange(url, [bytes]);
  const responses = parseResponses(res.text);
  expect(responses).toHaveLength(1);
  expect(res.closed).toBe(true);
  const [r] = responses;
  expect(r!.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
  const json = JSON.parse(r!.body);
  expect(json.requestId).toMatch(/^[0-9a-f-]{36}$/);
  expect(r!.headers['x-request-id']).toBe(json.requestId);
  expect(json.status).toBe(r!.status);
  return { ...r!, json };
}

describe("refusals by Node's parser", () => {
  const cases: [string, () => string, number, string][] = [
    ['Content-Length with Transfer-Encoding', () => `POST /echo/x HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['two Content-Lengths', () => `POST /echo/x HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`, 400, 'ERR_BAD_REQUEST'],
    ['Transfer-Encoding: chunked, identity', () => `POST /echo/x HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['a space before the colon', () => `GET /echo/x HTTP/1.1\r\nHost : ${host()}\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['obs-fold', () => `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\nX-A: a\r\n b\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['a bad version', () => `GET /echo/x HTTP/1.x\r\nHost: ${host()}\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['bare LF line ends', () => `GET /echo/x HTTP/1.1\nHost: ${host()}\n\n`, 400, 'ERR_BAD_REQUEST'],
    ['a bad method', () => `G@T /echo/x HTTP/1.1\r\nHost: ${host()}\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['NUL in the target', () => `GET /echo/\0 HTTP/1.1\r\nHost: ${host()}\r\n\r\n`, 400, 'ERR_BAD_REQUEST'],
    ['an HTTP/2 preface', () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, 'ERR_BAD_REQUEST'],
    ['a head over maxHeaderBytes', () => `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`, 431, 'ERR_HEADERS_TOO_LARGE'],
    ['many headers over maxHeaderBytes', () => `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\n${'X-A: b\r\n'.repeat(700)}\r\n`, 431, 'ERR_HEADERS_TOO_LARGE'],
    ['more than 200 header fields', () => `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\n${'A: b\r\n'.repeat(250)}\r\n`, 431, 'ERR_HEADERS_TOO_LARGE'],
    ['no Host (HTTP/1.1)', () => 'GET /echo/x HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'ERR_BAD_REQUEST'],
    ['no Host (HTTP/1.0)', () => 'GET /echo/x HTTP/1.0\r\n\r\n', 400, 'ERR_BAD_REQUEST'],
    ['absolute-form target', () => `GET http://${host()}/echo/x HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`, 400, 'ERR_BAD_PATH'],
    ['CONNECT', () => `CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n`, 400, 'ERR_BAD_PATH'],
  ];
  for (const [name, bytes, status, code] of cases) {
    it(`answers ${name} with a ${status} problem (${code}), an access line and a count`, async () => {
      const r = await problemFor(gw.url, bytes());
      expect(r.status).toBe(status);
      expect(r.json.code).toBe(code);
      expect(r.body).not.toMatch(/HPE_|llhttp|Parse Error|node:/);
      expect(echo.requests).toHaveLength(0);
      const line = gw.logs.find((l) => l.msg === 'access' && l.reqId === r.json.requestId);
      expect(line).toMatchObject({ status, code, client: '127.0.0.1' });
    });
  }

  it('counts parser refusals in the request metrics', async () => {
    await problemFor(gw.url, `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`);
    const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
    expect(metrics).toMatch(/ztgw_requests_total\{route="none",status="431",decision="error"\} [1-9]/);
    expect(metrics).toMatch(/ztgw_requests_total\{route="none",status="400",decision="error"\} [1-9]/);
  });

  it('answers a malformed chunk in a body with a 400 problem', async () => {
    const res = await exchange(gw.url, [`POST /echo/x HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`]);
    const [r] = parseResponses(res.text);
    expect(r!.status).toBe(400);
    expect(r!.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    expect(JSON.parse(r!.body).code).toBe('ERR_BAD_REQUEST');
    expect(res.closed).toBe(true);
  });
});

describe('timeouts', () => {
  it('answers a head that never ends with a 408 problem after headersMs', async () => {
    const started = Date.now();
    const r = await problemFor(gw.url, `GET /echo/x HTTP/1.1\r\nHost: ${host()}\r\nX-Slow: `);
    expect(r.status).toBe(408);
    expect(r.json.code).toBe('ERR_REQUEST_TIMEOUT');
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(gw.logs.find((l) => l.msg === 'access' && l.reqId === r.json.requestId)).toMatchObject({ status: 408, code: 'ERR_REQUEST_TIMEOUT' });
  });

  it('answers a body that never ends with a 408 problem after requestMs, logged as that request', async () => {
    const r = await problemFor(gw.url, `POST /echo/slow HTTP/1.1\r\nHost: ${host()}\r\nAuthorization: Bearer ${token}\r\nContent-Length: 10\r\n\r\nab`);
    expect(r.status).toBe(408);
    expect(r.json.code).toBe('ERR_REQUEST_TIMEOUT');
    expect(gw.logs.find((l) => l.msg === 'access' && l.reqId === r.json.requestId)).toMatchObject({ status: 408, path: '/echo/slow', method: 'POST', code: 'ERR_REQUEST_TIMEOUT' });
  });
});

describe('refusals by the router, and the access line', () => {
  it('answers a URL the router cannot decode with a problem, and logs it without the query', async () => {
    const res = await rawRequest(gw.url, '/%E0%A4%A?token=SECRET-A', { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    const body = res.json();
    const line = gw.logs.find((l) => l.msg === 'access' && l.reqId === body.requestId);
    expect(line).toMatchObject({ status: 400, path: '/%E0%A4%A', code: body.code });
  });

  it('never logs the query string, for refused and for forwarded requests', async () => {
    const ids: string[] = [];
    for (const path of ['/echo/%2e%2e/x?code=SECRET-B', '/echo/ok?code=SECRET-C', '/nowhere?code=SECRET-D', '/echo/private/x?code=SECRET-E']) {
      const res = await rawRequest(gw.url, path, { headers: { authorization: `Bearer ${token}` } });
      ids.push(String(res.headers['x-request-id']));
    }
    const lines = gw.logs.filter((l) => l.msg === 'access' && ids.includes(l.reqId));
    expect(lines.map((l) => [l.path, l.status])).toEqual([
      ['/echo/%2e%2e/x', 400],
      ['/echo/ok', 200],
      ['/nowhere', 404],
      ['/echo/private/x', 403],
    ]);
    expect(JSON.stringify(gw.logs)).not.toMatch(/SECRET-[A-E]/);
  });

  it('answers a method no route takes with a problem and an access line', async () => {
    const res = await rawRequest(gw.url, '/echo/x?q=SECRET-F', { method: 'PROPFIND', headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    const line = gw.logs.find((l) => l.msg === 'access' && l.reqId === res.json().requestId);
    expect(line).toMatchObject({ status: 405, method: 'PROPFIND', path: '/echo/x', code: 'ERR_METHOD_NOT_ALLOWED', decision: 'error' });
  });
});

describe('Expect: 100-continue', () => {
  const upload = (path: string, headers: string[], length: number) =>
    `POST ${path} HTTP/1.1\r\nHost: ${host()}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\n${headers.map((h) => h + '\r\n').join('')}\r\n`;
  const auth = () => `Authorization: Bearer ${token}`;

  it('invites the upload only after authentication and policy: 100, then the body reaches the upstream', async () => {
    const body = 'y'.repeat(1000);
    const res = await exchange(gw.url, [
      upload('/echo/up', [auth()], body.length),
      async (received) => {
        await waitFor(received, (s) => s.includes('\r\n\r\n'));
        expect(received()).toBe('HTTP/1.1 100 Continue\r\n\r\n');
        return body;
      },
      async (received) => {
        await waitFor(received, (s) => {
          try {
            return parseResponses(s).length === 2;
          } catch {
            return false;
          }
        });
        return undefined;
      },
    ], { deadlineMs: 200, endAfterWrite: true });
    const [cont, final] = parseResponses(res.text);
    expect(cont!.status).toBe(100);
    expect(final!.status).toBe(200);
    expect(JSON.parse(final!.body).body).toBe(body);
    expect(echo.requests[0]!.headers.expect).toBeUndefined();
  });

  const refusals: [string, () => string, number, string][] = [
    ['without a token', () => upload('/echo/up', [], 1000), 401, 'ERR_MISSING_TOKEN'],
    ['with a bad token', () => upload('/echo/up', ['Authorization: Bearer a.b.c'], 1000), 401, 'ERR_INVALID_TOKEN'],
    ['to a path the policy denies', () => upload('/echo/private/up', [auth()], 1000), 403, 'ERR_ACCESS_DENIED'],
    ['over the body limit', () => upload('/echo/up', [auth()], MAX_BODY + 1), 413, 'ERR_PAYLOAD_TOO_LARGE'],
  ];
  for (const [name, bytes, status, code] of refusals) {
    it(`refuses an upload ${name} (${status}) without ever sending 100, and closes the connection`, async () => {
      const r = await problemFor(gw.url, bytes());
      expect(r.status).toBe(status);
      expect(r.json.code).toBe(code);
      expect(r.headers.connection).toBe('close');
      expect(echo.requests).toHaveLength(0);
    });
  }

  it('uploads 3 MB end to end with Node’s client, which waits for the 100 as curl does', async () => {
    const body = randomBytes(3 * 1024 * 1024).toString('base64url').slice(0, 3 * 1024 * 1024);
    const url = new URL(gw.url);
    const result = await new Promise<{ status: number; text: string; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = http.request(
        { host: url.hostname, port: url.port, method: 'PUT', path: '/echo/big', agent: false, headers: { authorization: `Bearer ${token}`, expect: '100-continue', 'content-type': 'text/plain', 'content-length': body.length } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text, continued }));
        },
      );
      req.on('continue', () => {
        continued = true;
        req.end(body);
      });
      req.on('error', reject);
    });
    expect(result.continued).toBe(true);
    expect(result.status).toBe(200);
    const seen = JSON.parse(result.text).body as string;
    expect(createHash('sha256').update(seen).digest('hex')).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it('ignores an expectation it does not know instead of answering 417 outside the pipeline', async () => {
    const res = await rawRequest(gw.url, '/echo/x', { headers: { authorization: `Bearer ${token}`, expect: 'something-else' } });
    expect(res.status).toBe(200);
    expect(res.json().headers.expect).toBeUndefined();
  });
});

describe('the admin plane', () => {
  it('answers unknown paths, bad parameters and malformed requests with problems', async () => {
    const notFound = await rawRequest(gw.adminUrl, '/nope');
    expect(notFound.status).toBe(404);
    expect(notFound.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    expect(notFound.json()).toMatchObject({ code: 'ERR_ROUTE_NOT_FOUND', requestId: notFound.headers['x-request-id'] });
    const bad = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=999', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(bad.status).toBe(400);
    expect(bad.json()).toMatchObject({ code: 'ERR_BAD_REQUEST', requestId: expect.stringMatching(/\S/) });
    const method = await rawRequest(gw.adminUrl, '/metrics', { method: 'DELETE' });
    expect(method.status).toBe(404);
    expect(method.json().code).toBe('ERR_ROUTE_NOT_FOUND');
    const parser = await problemFor(gw.adminUrl, 'POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    expect(parser.status).toBe(400);
    const big = await problemFor(gw.adminUrl, `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(big.status).toBe(431);
    const badUrl = await rawRequest(gw.adminUrl, '/%E0%A4%A');
    expect(badUrl.status).toBe(400);
    expect(badUrl.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
  });
});
