// Logs that reach their destination: `ztgw serve` as a real child process, its stdout a file
// or a pipe, and every way it can end (SIGKILL, SIGTERM, SIGINT, an uncaught error, a start
// that fails). Then, in process: the lines for requests cut at the shutdown deadline and for
// WebSocket sessions when they end.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { FLUSH_INTERVAL_MS } from '../../src/observability/logging.ts';
import { startGateway } from '../../src/gateway.ts';
import { parseConfig } from '../../src/config/load.ts';
import { startTestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');
const ISS = 'https://idp.test.local/';
const dir = mkdtempSync(join(tmpdir(), 'ztgw-logs-'));
// After the last line, a SIGKILL waits this long: the flush interval, and a second of slack
// for a busy machine (the timer is late, the write goes through the thread pool).
const KILL_AFTER_MS = FLUSH_INTERVAL_MS + 1_500;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let token: string;

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway' });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(idp.publicJwks()));
  mkdirSync(join(dir, 'policies'));
  writeFileSync(
    join(dir, 'policies', 'allow.yaml'),
    'apiVersion: zt-gateway/v1\nname: anyone\nappliesTo: { routes: [echo] }\nrules:\n  - { name: anyone, effect: allow, when: "true" }\n',
  );
});
afterAll(() => echo?.close());

/** A config on port 0 (the URLs are read from the "gateway listening" line), decisions to their own file. */
function writeConfig(name: string, opts: { decisionFile?: string; port?: number; policyDir?: string } = {}): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    `server:
  listen: { host: 127.0.0.1, port: ${opts.port ?? 0} }
  admin: { host: 127.0.0.1, port: 0 }
  timeouts: { shutdownMs: 5000 }
identity:
  issuers:
    - { name: corp, issuer: "${ISS}", audiences: [zt-gateway], algorithms: [ES256], jwksFile: jwks.json }
routes:
  - { name: echo, pathPrefix: /echo/, upstream: "${echo.url}" }
policies:
  dir: ${opts.policyDir ?? 'policies'}
  decisionLog: { allowSampleRate: 1, file: ${JSON.stringify(opts.decisionFile ?? `${name}.decisions.log`)} }
`,
  );
  return file;
}

interface Serving {
  child: ChildProcess;
  /** Everything the child wrote to stdout so far (read from the file, or gathered from the pipe). */
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

/** `ztgw serve`, stdout to a file or a pipe; `preload` is a module run first (node --import). */
function serve(config: string, how: 'file' | 'pipe', preload?: string): Serving {
  const outFile = `${config}.stdout`;
  const fd = how === 'file' ? openSync(outFile, 'w') : undefined;
  const child = spawn(process.execPath, [...(preload === undefined ? [] : ['--import', preload]), CLI, 'serve', '--config', config], {
    stdio: ['ignore', fd ?? 'pipe', 'pipe'],
  });
  if (fd !== undefined) closeSync(fd);
  let piped = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => (piped += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  // Resolves once stdout is read to its end as well, so nothing the child wrote is missed.
  const exited = new Promise<number | null>((done) => child.once('close', (code) => done(code)));
  return { child, stdout: () => (fd === undefined ? piped : readFileSync(outFile, 'utf8')), stderr: () => err, exited };
}

const linesOf = (text: string): Record<string, any>[] => text.split('\n').filter(Boolean).map((l) => JSON.parse(l));

async function until<T>(what: string, probe: () => T | undefined, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits for the "gateway listening" line (itself proof that a quiet log is flushed) and sends one request. */
async function oneRequest(s: Serving): Promise<string> {
  const listening = await until('the "gateway listening" line', () => {
    if (s.child.exitCode !== null) throw new Error(`ztgw exited ${s.child.exitCode}: ${s.stderr()}`);
    return linesOf(s.stdout()).find((l) => l.msg === 'gateway listening');
  });
  const res = await rawRequest(listening.url, '/echo/one', { headers: { authorization: `Bearer ${token}` } });
  expect(res.status).toBe(200);
  return res.headers['x-request-id'] as string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('lines reach their destination within a second, with nothing else written', () => {
  it.each(['file', 'pipe'] as const)('stdout to a %s: a SIGKILL after a quiet second loses neither the access nor the decision line', async (how) => {
    const config = writeConfig(`kill-${how}`);
    const s = serve(config, how);
    const reqId = await oneRequest(s);
    await sleep(KILL_AFTER_MS);
    s.child.kill('SIGKILL');
    await s.exited;
    expect(linesOf(s.stdout()).filter((l) => l.msg === 'access')).toEqual([expect.objectContaining({ reqId, status: 200, path: '/echo/one' })]);
    const decisions = linesOf(readFileSync(`${config.replace(/\.yaml$/, '')}.decisions.log`, 'utf8'));
    expect(decisions).toEqual([expect.objectContaining({ log: 'decision', reqId, effect: 'allow' })]);
  }, 40_000);
});

describe('every way out flushes', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('%s at once after a request: every line written, exit 0', async (signal) => {
    const config = writeConfig(`stop-${signal}`);
    const s = serve(config, 'file');
    const reqId = await oneRequest(s);
    s.child.kill(signal); // well inside the flush interval: the exit path must write them
    expect(await s.exited).toBe(0);
    const msgs = linesOf(s.stdout()).map((l) => l.msg);
    expect(msgs).toEqual(expect.arrayContaining(['access', 'draining', 'gateway stopped']));
    expect(linesOf(readFileSync(`${config.replace(/\.yaml$/, '')}.decisions.log`, 'utf8'))).toEqual([expect.objectContaining({ reqId })]);
    expect(s.stderr()).toBe('');
  }, 40_000);

  const preload = (body: string): string => {
    const file = join(dir, `preload-${Math.random().toString(36).slice(2)}.mjs`);
    writeFileSync(file, `process.on('SIGUSR2', () => { ${body} });\n`);
    return file;
  };
  it.each([
    ['an uncaught exception', "throw new Error('induced failure')", 'uncaught exception'],
    ['an unhandled rejection', "Promise.reject(new Error('induced failure'))", 'unhandled rejection'],
  ])('%s: a fatal line with the error, the lines before it written, exit 1', async (_what, body, msg) => {
    const config = writeConfig(`fatal-${msg.replace(' ', '-')}`);
    const s = serve(config, 'pipe', preload(body));
    const reqId = await oneRequest(s);
    s.child.kill('SIGUSR2');
    expect(await s.exited).toBe(1);
    const lines = linesOf(s.stdout());
    expect(lines.find((l) => l.msg === 'access')).toMatchObject({ reqId });
    expect(lines.at(-1)).toMatchObject({ level: 60, msg, err: { message: 'induced failure' } });
    expect(linesOf(readFileSync(`${config.replace(/\.yaml$/, '')}.decisions.log`, 'utf8'))).toEqual([expect.objectContaining({ reqId })]);
    expect(s.stderr()).toMatch(new RegExp(`^ztgw: ${msg}, exiting: induced failure`));
    expect(s.stderr()).not.toMatch(/\n\s+at /);
  }, 40_000);
});

describe('a start that fails says why, once, without a sonic-boom trace', () => {
  const noTrace = (stderr: string) => {
    expect(stderr).not.toMatch(/sonic boom|SonicBoom|Unhandled 'error' event/i);
    expect(stderr).not.toMatch(/\n\s+at /);
  };

  it('a decision log that cannot be opened: exit 2, the setting named at its line', async () => {
    writeFileSync(join(dir, 'not-a-dir'), '');
    const config = writeConfig('unopenable', { decisionFile: 'not-a-dir/decisions.log' });
    const s = serve(config, 'pipe');
    expect(await s.exited).toBe(2);
    expect(s.stderr()).toMatch(new RegExp(`^${config.replace(/[.]/g, '\\.')}:\\d+:\\d+: policies\\.decisionLog\\.file: cannot open .*not-a-dir/decisions\\.log for writing \\((ENOTDIR|EEXIST)\\)\\n$`));
    expect(s.stderr().split(':')[1]).toBe('12'); // the decisionLog line of writeConfig's text
    noTrace(s.stderr());
  }, 30_000);

  it('a broken policy set, decisions to a file: exit 2 with file:line, no trace', async () => {
    const policyDir = mkdtempSync(join(dir, 'broken-'));
    writeFileSync(join(policyDir, 'p.yaml'), 'apiVersion: zt-gateway/v1\nname: x\nrules: [ { name: r, effect: allow, when: "(" } ]\n');
    const s = serve(writeConfig('broken-policy', { policyDir }), 'pipe');
    expect(await s.exited).toBe(2);
    expect(s.stderr()).toMatch(/p\.yaml:\d+:\d+/);
    noTrace(s.stderr());
  }, 30_000);

  it('a port in use, decisions to a file: exit 1 naming the port, no trace, the lines before it written', async () => {
    const s = serve(writeConfig('port-in-use', { port: echo.port }), 'pipe');
    expect(await s.exited).toBe(1);
    expect(s.stderr()).toContain(String(echo.port));
    noTrace(s.stderr());
    expect(linesOf(s.stdout()).map((l) => l.msg)).toContain('policies loaded');
  }, 30_000);
});

// In process from here: a gateway whose stdout-like destination is a real, buffered sonic-boom file.
const gatewayConfig = (shutdownMs: number) => ({
  server: { timeouts: { shutdownMs } },
  identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksFile: join(dir, 'jwks.json') }] },
  routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url, websocket: true }],
});

describe('close()', () => {
  it('resolves with every line written to a buffered destination', async () => {
    const file = join(dir, 'close.log');
    const destination = pino.destination({ dest: file, sync: false, minLength: 4096 });
    await new Promise((done) => destination.once('ready', done));
    const withPorts = { ...gatewayConfig(5000), server: { listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } };
    const config = parseConfig(JSON.stringify(withPorts), join(dir, 'close.yaml'), {});
    const gw = await startGateway({ source: { config, dir }, logDestination: destination });
    await rawRequest(gw.url, '/echo/x', { headers: { authorization: `Bearer ${token}` } });
    await gw.close();
    const msgs = linesOf(readFileSync(file, 'utf8')).map((l) => l.msg);
    expect(msgs).toEqual(expect.arrayContaining(['gateway listening', 'access', 'gateway stopped']));
    destination.end();
  });
});

describe('requests cut at the shutdown deadline', () => {
  it('are logged and counted as the gateway cut them: 503 ERR_SHUTTING_DOWN, not as a client that left', async () => {
    const gw = await startTestGateway(gatewayConfig(1000));
    const inFlight = rawRequest(gw.url, '/echo/slow?delay=30000', { headers: { authorization: `Bearer ${token}` }, timeoutMs: 30_000 }).catch((e: Error) => e);
    await until('the upstream to have the request', () => (echo.requests.some((r) => r.url === '/echo/slow?delay=30000') ? true : undefined));
    await gw.close();
    expect(await inFlight).toBeInstanceOf(Error); // the connection was cut
    const line = gw.logs.find((l) => l.msg === 'access' && l.path === '/echo/slow');
    expect(line).toMatchObject({ status: 503, code: 'ERR_SHUTTING_DOWN', decision: 'error', route: 'echo', sub: 'alice' });
    expect(gw.logs.filter((l) => l.msg === 'access' && l.path === '/echo/slow')).toHaveLength(1);
    expect(gw.logs.findIndex((l) => l === line)).toBeLessThan(gw.logs.findIndex((l) => l.msg === 'gateway stopped'));
    expect(gw.logs.filter((l) => l.msg === 'upstream error')).toEqual([]); // the gateway's own cut, not the upstream's failure
  }, 30_000);
});

describe('WebSocket sessions', () => {
  const open = (url: string): Promise<WebSocket> => {
    const ws = new WebSocket(`${url.replace('http:', 'ws:')}/echo/socket`, { headers: { authorization: `Bearer ${token}` } });
    return new Promise((done, fail) => ws.once('open', () => done(ws)).once('error', fail));
  };
  const echoed = (ws: WebSocket, text: string) =>
    new Promise<void>((done) => {
      ws.once('message', () => done());
      ws.send(text);
    });

  it('get a closing line with their duration and the bytes each way, beside the handshake line, counted once', async () => {
    const gw = await startTestGateway(gatewayConfig(5000));
    try {
      const ws = await open(gw.url);
      await echoed(ws, 'x'.repeat(1000));
      await echoed(ws, 'y'.repeat(200));
      ws.close();
      const closing = await until('the closing line', () => gw.logs.find((l) => l.msg === 'websocket closed'));
      const handshake = gw.logs.find((l) => l.msg === 'access' && l.upgrade === 'websocket');
      expect(handshake).toMatchObject({ status: 101 });
      expect(closing).toMatchObject({ log: 'access', reqId: handshake!.reqId, status: 101, upgrade: 'websocket', route: 'echo', sub: 'alice', path: '/echo/socket' });
      expect(closing.ms).toBeGreaterThan(0);
      // 1,200 bytes of text each way in masked client frames / unmasked server frames, plus the close frames.
      expect(closing.bytesIn).toBeGreaterThanOrEqual(1200 + 2 * 6);
      expect(closing.bytesOut).toBeGreaterThanOrEqual(1200 + 2 * 2);
      expect(closing.bytesIn).toBeLessThan(1300);
      const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
      expect(metrics).toMatch(/ztgw_requests_total\{route="echo",status="101",decision="allow"\} 1\n/);
    } finally {
      await gw.close();
    }
  });

  it('still open at the shutdown deadline are ended, each with its closing line (ERR_SHUTTING_DOWN)', async () => {
    const gw = await startTestGateway(gatewayConfig(1000));
    const ws = await open(gw.url);
    const closed = new Promise((done) => ws.once('close', done));
    await gw.close();
    await closed;
    expect(gw.logs.find((l) => l.msg === 'websocket closed')).toMatchObject({ status: 101, code: 'ERR_SHUTTING_DOWN', decision: 'error' });
  }, 30_000);
});
