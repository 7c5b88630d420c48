// Upstream protection end to end (issue 14): breakers per endpoint on a dead, a slow and a
// flapping upstream, failover between priorities and back, retries within their budget, the
// fair share against one principal stalling many downloads, and the send and body idle
// timeouts. Real gateway, real HTTP servers on 127.0.0.1; breaker windows made small in config.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import { once } from 'node:events';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import WebSocket from 'ws';
import { startEchoServer, type EchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { freePort } from '../helpers/ports.ts';

const ISS = 'https://idp.test.local/';
const AUD = 'zt-gateway';
const SEND_IDLE_MS = 2000;
const BODY_IDLE_MS = 1000;

/** A plain upstream we can stop and start again on the same port, counting what reaches it. */
interface TestUpstream {
  port: number;
  url: string;
  /** TCP connections accepted, requests seen. */
  connections: number;
  requests: number;
  /** What the next requests get. */
  mode: 'ok' | 'fail' | 'slow-ok';
  stop(): Promise<void>;
  start(): Promise<void>;
}

async function startUpstream(name: string, port = 0): Promise<TestUpstream> {
  const up: TestUpstream = {
    port,
    url: '',
    connections: 0,
    requests: 0,
    mode: 'ok',
    stop: async () => {},
    start: async () => {},
  };
  let server: http.Server | undefined;
  up.start = async () => {
    server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
      up.requests++;
      req.resume();
      const answer = () => {
        res.writeHead(up.mode === 'fail' ? 500 : 200, { 'content-type': 'text/plain' });
        res.end(name);
      };
      if (up.mode === 'slow-ok') setTimeout(answer, 1500); // a probe long enough to be overlapped
      else answer();
    });
    server.on('connection', () => void up.connections++);
    server.listen(up.port, '127.0.0.1');
    await once(server, 'listening');
    up.port = (server.address() as AddressInfo).port;
    up.url = `http://127.0.0.1:${up.port}`;
  };
  up.stop = async () => {
    if (server === undefined) return;
    const s = server;
    server = undefined;
    s.closeAllConnections();
    await new Promise<void>((done) => s.close(() => done()));
  };
  await up.start();
  return up;
}

/** Counts connections on a port without answering: "did anything reach the upstream?". */
async function listenCounting(port: number): Promise<{ count: () => number; close: () => Promise<void> }> {
  let n = 0;
  const sockets = new Set<Socket>();
  const server = net.createServer((s) => {
    n++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return {
    count: () => n,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
}

async function until<T>(what: string, probe: () => T | Promise<T>, deadlineMs = 10_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

let echo: EchoServer;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let flap: TestUpstream;
let local: TestUpstream;
let central: TestUpstream;
let uploads: { url: string; aborted: number; completed: number; close(): Promise<void> };
let deadPort: number;
let twinsDeadPort: number;
const tokens = new Map<string, string>();

async function bearer(sub: string): Promise<{ authorization: string }> {
  let token = tokens.get(sub);
  if (token === undefined) tokens.set(sub, (token = await idp.sign({}, { sub, aud: AUD, expiresIn: '10m' })));
  return { authorization: `Bearer ${token}` };
}

async function breakerGauge(upstream: string, endpoint: string): Promise<number | undefined> {
  const { values } = await gw.metrics.breakerState.get();
  return values.find((v) => v.labels.upstream === upstream && v.labels.endpoint === endpoint)?.value;
}

async function counter(metric: 'upstreamRetries' | 'upstreamRefusals', labels: Record<string, string>): Promise<number> {
  const { values } = await gw.metrics[metric].get();
  return values.find((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x))?.value ?? 0;
}

/** A keep-alive client: an open-state answer timed without a TCP handshake in it. */
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
function timedGet(path: string, headers: Record<string, string>): Promise<{ status: number; ms: number; code?: string }> {
  const url = new URL(gw.url);
  const started = performance.now();
  return new Promise((done, fail) => {
    const req = http.request({ host: url.hostname, port: url.port, path, headers, agent: keepAlive }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const ms = performance.now() - started;
        const text = Buffer.concat(chunks).toString();
        done({ status: res.statusCode ?? 0, ms, code: text.startsWith('{') ? JSON.parse(text).code : undefined });
      });
    });
    req.on('error', fail);
    req.end();
  });
}

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  flap = await startUpstream('flap');
  local = await startUpstream('local');
  central = await startUpstream('central');
  deadPort = await freePort();
  twinsDeadPort = await freePort();
  // An upload sink that notes whether a request body ended or was cut off.
  const sink = { aborted: 0, completed: 0 };
  const uploadServer = http.createServer((req, res) => {
    req.on('data', () => {});
    req.on('end', () => {
      sink.completed++;
      res.end('stored');
    });
    req.on('aborted', () => void sink.aborted++);
  });
  uploadServer.listen(0, '127.0.0.1');
  await once(uploadServer, 'listening');
  uploads = Object.assign(sink, {
    url: `http://127.0.0.1:${(uploadServer.address() as AddressInfo).port}`,
    close: async () => {
      uploadServer.closeAllConnections();
      await new Promise<void>((done) => uploadServer.close(() => done()));
    },
  });
  const dead = `http://127.0.0.1:${deadPort}`;
  gw = await startTestGateway({
    server: { timeouts: { sendIdleMs: SEND_IDLE_MS, bodyIdleMs: BODY_IDLE_MS } },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    upstreams: {
      // Long resets where a test needs the breaker to stay open while it looks.
      dead: { endpoints: [{ name: 'a', url: dead }], breaker: { volumeThreshold: 5, resetTimeoutMs: 600_000 } },
      slow: { endpoints: [{ name: 'a', url: echo.url }], breaker: { volumeThreshold: 4, resetTimeoutMs: 600_000 } },
      flap: { endpoints: [{ name: 'a', url: flap.url }], breaker: { volumeThreshold: 3, resetTimeoutMs: 1500 } },
      orders: {
        endpoints: [
          { name: 'local', url: local.url, priority: 0 },
          { name: 'central', url: central.url, priority: 1 },
        ],
        breaker: { volumeThreshold: 3, resetTimeoutMs: 2000 },
      },
      twins: {
        endpoints: [
          { name: 'dead', url: `http://127.0.0.1:${twinsDeadPort}`, priority: 0 },
          { name: 'live', url: echo.url, priority: 1 },
        ],
        retry: { attempts: 1 },
      },
      stingy: {
        endpoints: [
          { name: 'dead', url: `http://127.0.0.1:${twinsDeadPort}`, priority: 0 },
          { name: 'live', url: echo.url, priority: 1 },
        ],
        retry: { attempts: 1, budgetPercent: 0, minRetryConcurrency: 1 },
      },
      files: { endpoints: [{ name: 'a', url: echo.url }], maxInFlightPerPrincipal: 20 },
      uploads: { endpoints: [{ name: 'a', url: uploads.url }] },
      sockets: { endpoints: [{ name: 'a', url: echo.url }], maxInFlightPerPrincipal: 1 },
    },
    routes: [
      { name: 'dead', pathPrefix: '/dead/', upstream: 'dead' },
      { name: 'dead-nobreaker', pathPrefix: '/dead-nobreaker/', upstream: 'dead', circuitBreaker: false },
      { name: 'slow', pathPrefix: '/slow/', upstream: 'slow', timeoutMs: 300 },
      { name: 'flap', pathPrefix: '/flap/', upstream: 'flap' },
      { name: 'orders', pathPrefix: '/orders/', upstream: 'orders' },
      { name: 'twins', pathPrefix: '/twins/', upstream: 'twins' },
      { name: 'stingy', pathPrefix: '/stingy/', upstream: 'stingy' },
      { name: 'files', pathPrefix: '/files/', upstream: 'files' },
      { name: 'uploads', pathPrefix: '/uploads/', upstream: 'uploads' },
      { name: 'sockets', pathPrefix: '/sockets/', upstream: 'sockets', websocket: true },
    ],
  });
});

afterAll(async () => {
  keepAlive.destroy();
  await gw?.close();
  await Promise.all([jwks?.close(), echo?.close(), flap?.stop(), local?.stop(), central?.stop(), uploads?.close()]);
});

describe('a dead upstream (connection refused)', () => {
  it('opens the breaker at its threshold; then answers 503 at once without contacting the upstream', { timeout: 30_000 }, async () => {
    const auth = await bearer('alice');
    // volumeThreshold 5, every request failing: the fifth failure opens it.
    for (let i = 0; i < 5; i++) {
      const res = await rawRequest(gw.url, '/dead/x', { headers: auth });
      expect(res.status, `request ${i + 1}`).toBe(502);
      expect(res.json().code).toBe('ERR_UPSTREAM_UNREACHABLE');
    }
    const open = await rawRequest(gw.url, '/dead/x', { headers: auth });
    expect(open.status).toBe(503);
    expect(open.json().code).toBe('ERR_UPSTREAM_UNAVAILABLE');
    // resetTimeoutMs 600 s: the next probe is minutes away, and Retry-After says so.
    expect(Number(open.headers['retry-after'])).toBeGreaterThan(500);
    expect(await breakerGauge('dead', 'a')).toBe(2);
    expect(gw.logs.some((l) => l.msg?.startsWith('circuit breaker opened') && l.upstream === 'dead' && l.endpoint === 'a' && l.level === 40)).toBe(true);

    // Something listens there now: while open, nothing may reach it.
    const listener = await listenCounting(deadPort);
    try {
      const times: number[] = [];
      for (let i = 0; i < 50; i++) {
        const res = await timedGet('/dead/x', auth);
        expect(res.status).toBe(503);
        expect(res.code).toBe('ERR_UPSTREAM_UNAVAILABLE');
        times.push(res.ms);
      }
      // Client-side, keep-alive, on a busy 2-core box: the median is the honest figure (a
      // single answer can wait for a GC or another test's process); the gateway's own time is
      // in the access lines.
      expect(median(times)).toBeLessThan(5);
      const own = gw.logs.filter((l) => l.msg === 'access' && l.route === 'dead' && l.status === 503).map((l) => l.ms as number);
      expect(median(own)).toBeLessThan(5);
      expect(listener.count()).toBe(0);
      expect(await counter('upstreamRefusals', { upstream: 'dead', reason: 'unavailable' })).toBeGreaterThanOrEqual(51);
    } finally {
      await listener.close();
    }
  });

  it('shows the open breaker on /readyz without making the instance unready', async () => {
    const res = await rawRequest(gw.adminUrl, '/readyz');
    expect(res.status).toBe(200);
    const checks = res.json().checks as { name: string; ok: boolean; detail?: string }[];
    expect(checks).toContainEqual(expect.objectContaining({ name: 'breaker:dead/a', ok: true, detail: 'open' }));
    expect(checks).toContainEqual(expect.objectContaining({ name: 'breaker:orders/central', ok: true, detail: 'closed' }));
  });

  it('keeps the open breaker through a config reload (no burst to an endpoint known to be down)', async () => {
    const auth = await bearer('alice');
    await until('the breaker open', async () => (await rawRequest(gw.url, '/dead/x', { headers: auth })).status === 503);
    const before = gw.holder.current.upstreamGuard;
    expect(await gw.reload()).toBeUndefined();
    expect(gw.holder.current.upstreamGuard).not.toBe(before);
    expect(gw.holder.current.upstreamGuard.states().find((s) => s.id === 'dead/a')?.state).toBe('open');
    expect((await rawRequest(gw.url, '/dead/x', { headers: auth })).status).toBe(503);
    expect(await breakerGauge('dead', 'a')).toBe(2);
  });

  it('lets a route with circuitBreaker: false pass the open breaker by', async () => {
    const auth = await bearer('alice');
    // Open (it is after the first test; run alone, this opens it).
    await until('the breaker open', async () => (await rawRequest(gw.url, '/dead/x', { headers: auth })).status === 503);
    const res = await rawRequest(gw.url, '/dead-nobreaker/x', { headers: auth });
    expect(res.status).toBe(502); // tried (and refused by the dead port), not 503
  });
});

describe('a slow upstream (answers after the route timeout)', () => {
  it('counts timeouts as failures: 504 until the breaker opens, then 503 without contacting it', { timeout: 30_000 }, async () => {
    const auth = await bearer('alice');
    for (let i = 0; i < 4; i++) {
      const res = await rawRequest(gw.url, '/slow/x?delay=3000', { headers: auth });
      expect(res.status, `request ${i + 1}`).toBe(504);
      expect(res.json().code).toBe('ERR_UPSTREAM_TIMEOUT');
    }
    const seen = echo.requests.filter((r) => r.url.startsWith('/slow/')).length;
    const res = await rawRequest(gw.url, '/slow/x?delay=3000', { headers: auth });
    expect(res.status).toBe(503);
    expect(res.json().code).toBe('ERR_UPSTREAM_UNAVAILABLE');
    expect(echo.requests.filter((r) => r.url.startsWith('/slow/')).length).toBe(seen);
    expect(await breakerGauge('slow', 'a')).toBe(2);
  });
});

describe('a flapping upstream', () => {
  it('recovers through half-open: one probe while others are refused, its success closes (gauge 2 → 1 → 0)', { timeout: 30_000 }, async () => {
    const auth = await bearer('alice');
    const seen: number[] = [];
    const note = async () => {
      const v = (await breakerGauge('flap', 'a'))!;
      if (seen.at(-1) !== v) seen.push(v);
      return v;
    };
    await note();
    flap.mode = 'fail';
    for (let i = 0; i < 3; i++) expect((await rawRequest(gw.url, '/flap/x', { headers: auth })).status).toBe(500);
    expect(await note()).toBe(2);
    expect((await rawRequest(gw.url, '/flap/x', { headers: auth })).status).toBe(503);
    // resetTimeoutMs 1500: opossum lets one probe through after it.
    await until('half-open', async () => (await note()) === 1);
    flap.mode = 'slow-ok';
    const before = flap.requests;
    const probe = rawRequest(gw.url, '/flap/probe', { headers: auth });
    await until('the probe at the upstream', () => flap.requests > before);
    const during = await rawRequest(gw.url, '/flap/other', { headers: auth });
    expect(during.status).toBe(503); // the probe's slot is taken: refused at once
    expect(flap.requests).toBe(before + 1);
    expect((await probe).status).toBe(200);
    expect(await note()).toBe(0);
    expect(seen).toEqual([0, 2, 1, 0]);
    expect((await rawRequest(gw.url, '/flap/x', { headers: auth })).status).toBe(200);
    const lines = gw.logs.filter((l) => l.upstream === 'flap' && l.msg?.startsWith('circuit breaker')).map((l) => l.to);
    expect(lines).toEqual(['open', 'half-open', 'closed']);
  });
});

describe('failover between priorities', () => {
  it('moves to priority 1 when priority 0 dies, and back when a probe succeeds', { timeout: 30_000 }, async () => {
    const auth = await bearer('alice');
    for (let i = 0; i < 3; i++) expect((await rawRequest(gw.url, '/orders/x', { headers: auth })).text).toBe('local');
    await local.stop();
    const answers: string[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await rawRequest(gw.url, '/orders/x', { headers: auth });
      answers.push(res.status === 200 ? res.text : String(res.status));
    }
    // 3 successes then f failures in the window: opossum opens once f / (3 + f) > 50%, so at
    // the fourth failure; every later request goes to central, without an error.
    expect(answers).toEqual([...Array(4).fill('502'), ...Array(16).fill('central')]);
    expect(await breakerGauge('orders', 'local')).toBe(2);

    await local.start(); // same port
    const back = await until(
      'traffic back on local',
      async () => (await rawRequest(gw.url, '/orders/x', { headers: auth })).text === 'local',
      10_000,
    );
    expect(back).toBe(true);
    for (let i = 0; i < 5; i++) expect((await rawRequest(gw.url, '/orders/x', { headers: auth })).text).toBe('local');
    expect(await breakerGauge('orders', 'local')).toBe(0);
  });
});

describe('retries', () => {
  it('retries a GET on another endpoint after a connection error: the client sees the answer', async () => {
    const before = await counter('upstreamRetries', { upstream: 'twins', result: 'sent' });
    const res = await rawRequest(gw.url, '/twins/x', { headers: await bearer('alice') });
    expect(res.status).toBe(200);
    expect(res.json().url).toBe('/twins/x');
    expect(await counter('upstreamRetries', { upstream: 'twins', result: 'sent' })).toBe(before + 1);
    // One client request: one access line.
    expect(gw.logs.filter((l) => l.msg === 'access' && l.reqId === res.headers['x-request-id'])).toHaveLength(1);
  });

  it('does not retry a POST with a body', async () => {
    const posts = echo.requests.filter((r) => r.method === 'POST').length;
    const retries = await counter('upstreamRetries', { upstream: 'twins', result: 'sent' });
    const res = await rawRequest(gw.url, '/twins/x', { method: 'POST', headers: { ...(await bearer('alice')), 'content-type': 'text/plain' }, body: 'hello' });
    expect(res.status).toBe(502);
    expect(echo.requests.filter((r) => r.method === 'POST').length).toBe(posts);
    expect(await counter('upstreamRetries', { upstream: 'twins', result: 'sent' })).toBe(retries);
  });

  it('refuses retries beyond the budget: the original failure is the answer', { timeout: 30_000 }, async () => {
    const auth = await bearer('alice');
    // budgetPercent 0, minRetryConcurrency 1: one retry at a time. The first holds its slot
    // (the live endpoint answers after 1.5 s); the others fail at the dead one meanwhile.
    const results = await Promise.all(Array.from({ length: 5 }, () => rawRequest(gw.url, '/stingy/x?delay=1500', { headers: auth })));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 502, 502, 502, 502]);
    expect(await counter('upstreamRetries', { upstream: 'stingy', result: 'sent' })).toBe(1);
    expect(await counter('upstreamRetries', { upstream: 'stingy', result: 'refused_by_budget' })).toBe(4);
  });
});

describe('fair share: one principal stalling many downloads', () => {
  it('keeps other principals served, refuses the hog beyond its share, and ends the stalled responses after sendIdleMs', { timeout: 30_000 }, async () => {
    const guard = gw.holder.current.upstreamGuard;
    const hog = (await bearer('hog')).authorization;
    const url = new URL(gw.url);
    // 135 downloads of 1 GiB that are never read: each socket is opened, sent a request, and
    // left alone (no 'data' listener, so nothing is read past the kernel's buffers).
    const sockets: Socket[] = [];
    const sentAt = Date.now();
    for (let i = 0; i < 135; i++) {
      const s = net.connect(Number(url.port), url.hostname);
      s.on('error', () => {});
      s.write(`GET /files/big?bytes=${2 ** 30} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: ${hog}\r\n\r\n`);
      sockets.push(s);
    }
    try {
      await until('the hog at its share, the rest refused', async () =>
        guard.inFlight('files') === 20 && (await counter('upstreamRefusals', { upstream: 'files', reason: 'principal_busy' })) === 115,
      );
      // The hog once more: 429 with a problem, at once.
      const more = await rawRequest(gw.url, '/files/one-more', { headers: { authorization: hog } });
      expect(more.status).toBe(429);
      expect(more.json().code).toBe('ERR_TOO_MANY_IN_FLIGHT');
      expect(more.headers['retry-after']).toBe('1');
      // Everyone else, meanwhile, at their usual latency (a few ms here; the stuck ones never end).
      const others = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => {
          const started = performance.now();
          const res = await rawRequest(gw.url, `/files/small?bytes=1000`, { headers: await bearer(`user-${i}`) });
          return { status: res.status, ms: performance.now() - started };
        }),
      );
      for (const o of others) {
        expect(o.status).toBe(200);
        expect(o.ms).toBeLessThan(1000);
      }
      // sendIdleMs later the stalled responses are ended and every slot is back.
      await until('the stalled downloads ended', () => guard.inFlight('files') === 0 && guard.principals('files') === 0, SEND_IDLE_MS + 8_000);
      expect(Date.now() - sentAt).toBeGreaterThanOrEqual(SEND_IDLE_MS); // by the idle timer, not by anything sooner
      const ended = gw.logs.filter((l) => l.msg === 'access' && l.route === 'files' && l.status === 408 && l.code === 'ERR_REQUEST_TIMEOUT');
      expect(ended).toHaveLength(20);
      expect(gw.logs.filter((l) => l.msg === 'client stopped reading; response ended')).toHaveLength(20);
      // And the hog may download again.
      expect((await rawRequest(gw.url, '/files/again?bytes=10', { headers: { authorization: hog } })).status).toBe(200);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });
});

describe('a stalled upload', () => {
  it('gets 408 after bodyIdleMs, its upstream request aborted and its slot returned', { timeout: 30_000 }, async () => {
    const guard = gw.holder.current.upstreamGuard;
    const { authorization } = await bearer('uploader');
    const url = new URL(gw.url);
    const s = net.connect(Number(url.port), url.hostname);
    const received: Buffer[] = [];
    s.on('data', (c: Buffer) => received.push(c));
    s.on('error', () => {});
    const aborted = uploads.aborted;
    const started = Date.now();
    s.write(`PUT /uploads/file HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: ${authorization}\r\nContent-Length: 1000\r\n\r\n` + 'x'.repeat(100));
    try {
      await until('the upload at the upstream', () => guard.inFlight('uploads') === 1);
      await until('an answer', () => Buffer.concat(received).includes('\r\n\r\n'), BODY_IDLE_MS + 8_000);
      const head = Buffer.concat(received).toString();
      expect(head).toMatch(/^HTTP\/1\.1 408 /);
      expect(head).toContain('ERR_REQUEST_TIMEOUT');
      expect(Date.now() - started).toBeGreaterThanOrEqual(BODY_IDLE_MS - 50);
      await until('the upstream request aborted', () => uploads.aborted === aborted + 1);
      await until('the slot back', () => guard.inFlight('uploads') === 0);
      expect(uploads.completed).toBe(0);
    } finally {
      s.destroy();
    }
  });
});

describe('WebSocket tunnels', () => {
  it('hold a slot of the fair share for their life', async () => {
    const auth = await bearer('ws-user');
    const wsUrl = gw.url.replace('http', 'ws') + '/sockets/chat';
    const first = new WebSocket(wsUrl, { headers: auth });
    await once(first, 'open');
    try {
      const second = new WebSocket(wsUrl, { headers: auth });
      second.on('error', () => {}); // terminate() below, before any connection: expected
      const [, res] = (await once(second, 'unexpected-response')) as [unknown, IncomingMessage];
      expect(res.statusCode).toBe(429);
      second.terminate();
    } finally {
      first.close();
    }
    const guard = gw.holder.current.upstreamGuard;
    await until('the tunnel slot back', () => guard.inFlight('sockets') === 0);
    const third = new WebSocket(wsUrl, { headers: auth });
    await once(third, 'open');
    third.close();
    await once(third, 'close');
  });
});

describe('config', () => {
  it('refuses a route naming an unknown upstream, with file:line (ztgw validate)', { timeout: 30_000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'ztgw-upstreams-'));
    const file = join(dir, 'gw.yaml');
    writeFileSync(
      file,
      [
        'identity:',
        '  issuers:',
        `    - { name: corp, issuer: "${ISS}", audiences: [${AUD}], algorithms: [ES256], jwksUrl: "http://127.0.0.1:1/jwks" }`,
        'upstreams:',
        '  orders: http://127.0.0.1:8081',
        'routes:',
        '  - name: api',
        '    pathPrefix: /api/',
        '    upstream: ordres',
        '',
      ].join('\n'),
    );
    const cli = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');
    const run = spawnSync(process.execPath, [cli, 'validate', '--config', file], { encoding: 'utf8', timeout: 20_000 });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(new RegExp(`${file.replace(/[.]/g, '\\.')}:9:\\d+: routes\\[0\\]\\.upstream: unknown upstream "ordres" \\(defined: orders\\)`));
  });
});

