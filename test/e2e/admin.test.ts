// The admin plane: health, readiness, metrics, profiling behind the admin token, and what logs
// never contain. (Host and Origin refusals: attack-admin.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startGateway } from '../../src/gateway.ts';
import { ConfigError } from '../../src/core/diagnostics.ts';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest, type RawResponse } from '../helpers/http.ts';
import { freePort } from '../helpers/ports.ts';

const ISS = 'https://idp.test.local/';
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let token: string;
const dir = mkdtempSync(join(tmpdir(), 'ztgw-admin-'));
const ADMIN_TOKEN = randomBytes(32).toString('base64url');
const tokenFile = join(dir, 'admin-token');
writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`, { mode: 0o600 }); // the final newline is not part of the token
const asAdmin = { authorization: `Bearer ${ADMIN_TOKEN}` };

const config = (profiling: boolean, admin: Record<string, unknown> = { tokenFile }) => ({
  server: { profiling, admin },
  identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
  routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
});

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway(config(true));
  token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway' });
});
afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

function expectProblem(res: RawResponse, status: number, code: string): void {
  expect(res.status, res.text).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = res.json();
  expect(body.code).toBe(code);
  expect(body.requestId).toMatch(/^[0-9a-f-]{36}$/);
  expect(res.headers['x-request-id']).toBe(body.requestId);
}

/** The private directory a heap snapshot was written to, from the gateway's log line. */
function snapshotDirs(g: TestGateway): string[] {
  return g.logs.filter((l) => l.msg?.startsWith('heap snapshot taken')).map((l) => l.dir as string);
}

describe('admin plane', () => {
  it('answers liveness at /healthz and /health', async () => {
    for (const path of ['/healthz', '/health']) {
      const res = await rawRequest(gw.adminUrl, path);
      expect(res.status).toBe(200);
      expect(res.json().status).toBe('ok');
    }
  });

  it('reports readiness with a named check per dependency', async () => {
    const res = await rawRequest(gw.adminUrl, '/readyz');
    expect(res.status).toBe(200);
    const names = res.json().checks.map((c: { name: string }) => c.name);
    expect(names).toEqual(['config', 'draining', 'issuer:corp', 'breaker:route:echo/default', 'rate-limit-store']);
  });

  it('is not the data plane: gateway routes are not served there, admin routes not on the data plane', async () => {
    expect((await rawRequest(gw.adminUrl, '/echo/x')).status).toBe(404);
    const res = await rawRequest(gw.url, '/metrics', { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(404);
    expect(res.text).not.toContain('ztgw_requests_total');
  });

  it('exposes Prometheus metrics for requests, latency, upstream and the event loop', async () => {
    await rawRequest(gw.url, '/echo/m', { headers: { authorization: `Bearer ${token}` } });
    await rawRequest(gw.url, '/echo/m');
    const res = await rawRequest(gw.adminUrl, '/metrics');
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toMatch(/ztgw_requests_total\{route="echo",status="200",decision="allow"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_requests_total\{route="echo",status="401",decision="deny"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_request_duration_seconds_count\{route="echo"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_upstream_duration_seconds_count\{route="echo"\} [1-9]/);
    expect(res.text).toMatch(/ztgw_auth_failures_total\{reason="ERR_MISSING_TOKEN"\} [1-9]/);
    expect(res.text).toContain('nodejs_eventloop_lag_seconds');
  });

  it('returns a CPU profile loadable in DevTools with the admin token, and says it costs CPU', async () => {
    const res = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1', { headers: asAdmin });
    expect(res.status, res.text).toBe(200);
    const profile = res.json();
    expect(Array.isArray(profile.nodes)).toBe(true);
    expect(profile.endTime).toBeGreaterThan(profile.startTime);
    expect(res.headers['content-disposition']).toMatch(/^attachment; filename="ztgw-.*\.cpuprofile"$/);
    expect(res.headers['x-ztgw-notice']).toMatch(/CPU/);
    expect(res.headers['cache-control']).toBe('no-store');
  });

  it('refuses profiles without the token, with a wrong one, or in another scheme: 401 with a Bearer challenge', async () => {
    const attempts: (Record<string, string> | undefined)[] = [
      undefined,
      { authorization: `Bearer ${ADMIN_TOKEN.slice(0, -1)}` },
      { authorization: `Bearer ${ADMIN_TOKEN}x` },
      { authorization: `Bearer ${ADMIN_TOKEN.slice(0, 16)}` },
      { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}` },
      { authorization: ADMIN_TOKEN },
      { authorization: `Bearer ${ADMIN_TOKEN} ${ADMIN_TOKEN}` },
      { authorization: 'Bearer ' },
    ];
    const before = gw.logs.length;
    for (const path of ['/debug/profile/cpu?seconds=1', '/debug/profile/heap', `/debug/profile/cpu?seconds=1&access_token=${ADMIN_TOKEN}`]) {
      for (const headers of attempts) {
        const res = await rawRequest(gw.adminUrl, path, { headers });
        expectProblem(res, 401, 'ERR_ADMIN_TOKEN_REQUIRED');
        expect(res.headers['www-authenticate']).toBe('Bearer realm="zt-gateway-admin"');
      }
    }
    // Each refusal is a warn line and a metric, never with the token in it.
    const refused = gw.logs.slice(before).filter((l) => l.msg === 'admin request refused');
    expect(refused).toHaveLength(3 * attempts.length);
    expect(refused.every((l) => l.level === 40 && l.reason === 'token')).toBe(true);
    expect(JSON.stringify(gw.logs)).not.toContain(ADMIN_TOKEN.slice(0, 16));
    const metrics = await rawRequest(gw.adminUrl, '/metrics');
    expect(metrics.text).toMatch(/ztgw_admin_refusals_total\{reason="token"\} (2[4-9]|[3-9]\d)/);
  });

  it('takes the scheme in any case', async () => {
    // A value under a second would be refused (400): the profile here is as short as allowed.
    const res = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1', { headers: { authorization: `bEaReR ${ADMIN_TOKEN}` } });
    expect(res.status, res.text).toBe(200);
  });

  it.each(['0', '61', '99', 'abc', '1e1', '-1', '0.5', '1.0', '', ' 5', '+5', '0x10', '100', 'Infinity'])(
    'refuses seconds=%j with 400 before profiling anything',
    async (seconds) => {
      const res = await rawRequest(gw.adminUrl, `/debug/profile/cpu?seconds=${encodeURIComponent(seconds)}`, { headers: asAdmin });
      expectProblem(res, 400, 'ERR_BAD_REQUEST');
    },
  );

  it('refuses a repeated seconds parameter', async () => {
    const res = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1&seconds=2', { headers: asAdmin });
    expectProblem(res, 400, 'ERR_BAD_REQUEST');
  });

  it('takes one profile or snapshot at a time (409, then free again); a snapshot streams from a private file removed afterwards, with its data-plane stall reported', async () => {
    const first = rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=3', { headers: asAdmin });
    // Wait until the first one holds the slot (its log line), not for a fixed time.
    const deadline = Date.now() + 10_000;
    while (!gw.logs.some((l) => l.msg === 'cpu profile started' && l.seconds === 3) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const path of ['/debug/profile/cpu?seconds=1', '/debug/profile/heap']) {
      const busy = await rawRequest(gw.adminUrl, path, { headers: asAdmin });
      expectProblem(busy, 409, 'ERR_PROFILE_BUSY');
      expect(busy.headers['retry-after']).toBeDefined();
    }
    expect((await first).status).toBe(200);

    // Free again: a heap snapshot. Meanwhile, data-plane requests measure the stall.
    const latencies: number[] = [];
    let snapshotDone = false;
    const probe = (async () => {
      while (!snapshotDone) {
        const t0 = performance.now();
        await rawRequest(gw.url, '/echo/probe', { headers: { authorization: `Bearer ${token}` } });
        latencies.push(performance.now() - t0); // back to back: one is always in flight when the snapshot starts
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    const heap = await rawRequest(gw.adminUrl, '/debug/profile/heap', { headers: asAdmin, timeoutMs: 60_000 });
    snapshotDone = true;
    await probe;
    expect(heap.status, heap.text.slice(0, 300)).toBe(200);
    expect(heap.text.startsWith('{"snapshot"')).toBe(true);
    expect(JSON.parse(heap.text).snapshot.meta).toBeDefined();
    expect(heap.headers['content-disposition']).toMatch(/^attachment; filename="ztgw-.*\.heapsnapshot"$/);
    expect(heap.headers['x-ztgw-notice']).toMatch(/pause every request.*every secret/);
    expect(heap.headers['x-ztgw-data-plane-stall-ms']).toMatch(/^\d+$/);
    // Reported, not asserted: how long the data plane waited on this machine.
    console.log(
      `heap snapshot: ${(heap.text.length / 1e6).toFixed(1)} MB, data plane stalled ${heap.headers['x-ztgw-data-plane-stall-ms']} ms ` +
        `(x-ztgw-data-plane-stall-ms); data-plane probe latencies meanwhile: ` +
        `median ${Math.round(latencies.sort((a, b) => a - b)[latencies.length >> 1]!)} ms, max ${Math.round(latencies.at(-1)!)} ms over ${latencies.length} requests`,
    );
    // The snapshot's private directory is gone once the response is done.
    const [snapshotDir] = snapshotDirs(gw);
    expect(snapshotDir).toMatch(/ztgw-heap-/);
    const gone = Date.now() + 5_000;
    while (existsSync(snapshotDir!) && Date.now() < gone) await new Promise((r) => setTimeout(r, 20));
    expect(existsSync(snapshotDir!)).toBe(false);
    // And the slot is free again.
    expect((await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1', { headers: asAdmin })).status).toBe(200);
  }, 60_000);

  it('frees the slot at once when a CPU profile\'s client leaves', async () => {
    const req = http.get(`${gw.adminUrl}/debug/profile/cpu?seconds=60`, { headers: asAdmin, agent: false });
    req.on('error', () => {});
    const deadline = Date.now() + 10_000;
    while (!gw.logs.some((l) => l.msg === 'cpu profile started' && l.seconds === 60) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    req.destroy();
    // Without the abort, the slot would stay taken for a minute: 409.
    let res: RawResponse | undefined;
    const until = Date.now() + 10_000;
    do {
      await new Promise((r) => setTimeout(r, 100));
      res = await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1', { headers: asAdmin });
    } while (res.status === 409 && Date.now() < until);
    expect(res.status).toBe(200);
  }, 30_000);

  it('removes the snapshot file and frees the slot when the client leaves mid-download', async () => {
    const before = snapshotDirs(gw).length;
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${gw.adminUrl}/debug/profile/heap`, { headers: asAdmin, agent: false }, (res) => {
        expect(res.statusCode).toBe(200);
        // Read one chunk, then hang up with the rest of the file unsent.
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
    });
    const dirs = snapshotDirs(gw);
    expect(dirs.length).toBe(before + 1);
    const snapshotDir = dirs.at(-1)!;
    const deadline = Date.now() + 10_000;
    while (existsSync(snapshotDir) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(existsSync(snapshotDir)).toBe(false);
    expect((await rawRequest(gw.adminUrl, '/debug/profile/cpu?seconds=1', { headers: asAdmin })).status).toBe(200);
  }, 60_000);

  it('has no profiling endpoints unless the config enables them (404, token or not); an unknown path is 404 without a token', async () => {
    const plain = await startTestGateway(config(false));
    try {
      for (const headers of [undefined, asAdmin]) {
        expectProblem(await rawRequest(plain.adminUrl, '/debug/profile/cpu?seconds=1', { headers }), 404, 'ERR_ROUTE_NOT_FOUND');
        expectProblem(await rawRequest(plain.adminUrl, '/debug/profile/heap', { headers }), 404, 'ERR_ROUTE_NOT_FOUND');
      }
    } finally {
      await plain.close();
    }
    expectProblem(await rawRequest(gw.adminUrl, '/nope'), 404, 'ERR_ROUTE_NOT_FOUND');
    // HEAD would take a profile only to throw it away: not served.
    expect((await rawRequest(gw.adminUrl, '/debug/profile/heap', { method: 'HEAD', headers: asAdmin })).status).toBe(404);
  });

  it('keeps health, readiness, metrics and the assertion JWKS open without a token', async () => {
    for (const path of ['/healthz', '/health', '/readyz', '/metrics', '/.well-known/zt-jwks.json']) {
      expect((await rawRequest(gw.adminUrl, path)).status, path).toBe(200);
    }
  });

  it('puts /metrics behind the token with metricsRequireToken', async () => {
    const guarded = await startTestGateway(config(false, { tokenFile, metricsRequireToken: true }));
    try {
      const refused = await rawRequest(guarded.adminUrl, '/metrics');
      expectProblem(refused, 401, 'ERR_ADMIN_TOKEN_REQUIRED');
      expect(refused.text).not.toContain('ztgw_');
      const res = await rawRequest(guarded.adminUrl, '/metrics', { headers: asAdmin });
      expect(res.status).toBe(200);
      expect(res.text).toContain('ztgw_admin_refusals_total{reason="token"} 1');
      expect((await rawRequest(guarded.adminUrl, '/healthz')).status).toBe(200);
    } finally {
      await guarded.close();
    }
  });

  it('turns not-ready while draining', async () => {
    const draining = await startTestGateway(config(false));
    const slow = rawRequest(draining.url, '/echo/x?delay=500', { headers: { authorization: `Bearer ${token}` } });
    await new Promise((r) => setTimeout(r, 100));
    const closing = draining.close();
    const ready = await rawRequest(draining.adminUrl, '/readyz').catch(() => undefined);
    if (ready) expect(ready.status).toBe(503);
    expect((await slow).status).toBe(200);
    await closing;
  });
});

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');

/** A config file as an operator writes it, admin settings from `adminLines` (YAML under server.admin). */
function configFile(name: string, adminLines: string[], profiling: boolean): string {
  const file = join(dir, name);
  writeFileSync(
    file,
    [
      'server:',
      '  listen: { host: 127.0.0.1, port: 0 }',
      `  profiling: ${profiling}`,
      '  admin:',
      '    host: 127.0.0.1',
      '    port: 0',
      ...adminLines.map((l) => `    ${l}`),
      'identity:',
      '  issuers:',
      `    - { name: corp, issuer: "${ISS}", audiences: [zt-gateway], algorithms: [ES256], jwksUrl: "${jwks.url}" }`,
      'routes:',
      `  - { name: echo, pathPrefix: /echo/, upstream: "${echo.url}" }`,
      '',
    ].join('\n'),
  );
  return file;
}

async function startupError(start: () => Promise<unknown>): Promise<ConfigError> {
  const err = await start().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  return err as ConfigError;
}

describe('the admin token at start', () => {
  const short = ADMIN_TOKEN.slice(0, 31);
  const write = (name: string, content: string) => {
    writeFileSync(join(dir, name), content);
    return join(dir, name);
  };

  it.each([
    ['profiling without a token', true, {}, 'server.profiling', /profiling needs the admin token: set server\.admin\.tokenFile or server\.admin\.tokenEnv/],
    ['metricsRequireToken without a token', false, { metricsRequireToken: true }, 'server.admin.metricsRequireToken', /needs the admin token/],
    ['a token of 31 characters', true, { tokenFile: 'short-token' }, 'server.admin.tokenFile', /has 31 characters; at least 32/],
    ['a missing token file', true, { tokenFile: 'no-such-token' }, 'server.admin.tokenFile', /cannot read .*no-such-token \(ENOENT\)/],
    ['an empty token file', true, { tokenFile: 'empty-token' }, 'server.admin.tokenFile', /is empty/],
    ['a token with a space', true, { tokenFile: 'spaced-token' }, 'server.admin.tokenFile', /printable ASCII without spaces/],
    ['both tokenFile and tokenEnv', true, { tokenFile, tokenEnv: 'ZTGW_TEST_ADMIN_TOKEN' }, 'server.admin.tokenEnv', /not both/],
  ])('refuses to start with %s, naming the setting', async (_what, profiling, admin, field, message) => {
    write('short-token', `${short}\n`);
    write('empty-token', '\n');
    write('spaced-token', `${ADMIN_TOKEN.slice(0, 20)} ${ADMIN_TOKEN.slice(20)}`);
    const err = await startupError(() => startTestGateway(config(profiling, admin), { dir }));
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]!.field).toBe(field);
    expect(err.issues[0]!.message).toMatch(message);
    expect(err.message).not.toContain(short);
  });

  it('reads the token from the environment the config is loaded with, and points at the setting\'s line when it is unusable', async () => {
    const file = configFile('env.yaml', ['tokenEnv: ZTGW_TEST_ADMIN_TOKEN'], true);
    for (const [env, message] of [
      [{}, 'environment variable ZTGW_TEST_ADMIN_TOKEN is not set'],
      [{ ZTGW_TEST_ADMIN_TOKEN: '' }, 'environment variable ZTGW_TEST_ADMIN_TOKEN is empty'],
      [{ ZTGW_TEST_ADMIN_TOKEN: short }, 'has 31 characters'],
    ] as const) {
      const err = await startupError(() => startGateway({ source: { file, env }, logDestination: { write: () => true } }));
      expect(err.issues[0]).toMatchObject({ file, line: 7, field: 'server.admin.tokenEnv' });
      expect(err.issues[0]!.message).toContain(message);
    }
    const g = await startGateway({ source: { file, env: { ZTGW_TEST_ADMIN_TOKEN: ADMIN_TOKEN } }, logDestination: { write: () => true } });
    try {
      expect((await rawRequest(g.adminUrl, '/debug/profile/cpu?seconds=1')).status).toBe(401);
      expect((await rawRequest(g.adminUrl, '/debug/profile/cpu?seconds=1', { headers: asAdmin })).status).toBe(200);
    } finally {
      await g.close();
    }
  }, 30_000);

  it('ztgw serve and ztgw validate exit 2 on a weak admin token, naming file, line and setting', async () => {
    const file = configFile('weak.yaml', ['tokenEnv: ZTGW_TEST_ADMIN_TOKEN'], true);
    for (const command of ['serve', 'validate']) {
      const child = spawn(process.execPath, [CLI, command, '--config', file], {
        env: { ...process.env, ZTGW_TEST_ADMIN_TOKEN: short },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('exit', r));
      expect(code, stderr).toBe(2);
      expect(stderr).toContain(`${file}:7:15: server.admin.tokenEnv: the admin token in environment variable ZTGW_TEST_ADMIN_TOKEN has 31 characters`);
      expect(stderr).not.toContain(short);
    }
  }, 30_000);
});

describe('the demo (npm start)', () => {
  it('keeps profiling behind a token it generates and prints at start', async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, ZTGW_PORT: String(await freePort()), ZTGW_ADMIN_PORT: String(await freePort()), ZTGW_ECHO_PORT: String(await freePort()) };
    delete env.ZTGW_ADMIN_TOKEN;
    const child = spawn(process.execPath, [CLI, 'demo'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      const deadline = Date.now() + 20_000;
      while (!/profile\/cpu\?seconds=5/.test(stderr) && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
      const printed = /admin token {2}([A-Za-z0-9_-]{43}) /.exec(stderr)?.[1];
      expect(printed, stderr).toBeDefined();
      expect(stderr).toContain(`curl -o ztgw.cpuprofile -H "Authorization: Bearer ${printed}" "http://127.0.0.1:${env.ZTGW_ADMIN_PORT}/debug/profile/cpu?seconds=5"`);
      const admin = `http://127.0.0.1:${env.ZTGW_ADMIN_PORT}`;
      expect((await rawRequest(admin, '/debug/profile/cpu?seconds=1')).status).toBe(401);
      expect((await rawRequest(admin, '/debug/profile/heap', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).status).toBe(401);
      expect((await rawRequest(admin, '/debug/profile/cpu?seconds=1', { headers: { authorization: `Bearer ${printed}` } })).status).toBe(200);
      expect((await rawRequest(admin, '/healthz', { headers: { host: 'rebind.example:9090' } })).status).toBe(421);
    } finally {
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  }, 40_000);
});

describe('logs', () => {
  it('writes one access line per request and never the token', async () => {
    const before = gw.logs.length;
    await rawRequest(gw.url, '/echo/log', { headers: { authorization: `Bearer ${token}`, cookie: 'session=s3cr3t' } });
    const lines = gw.logs.slice(before);
    expect(lines.filter((l) => l.msg === 'access')).toHaveLength(1);
    const text = JSON.stringify(gw.logs);
    expect(text).not.toContain(token);
    expect(text).not.toContain('s3cr3t');
  });

  it('redacts credentials even when a caller logs raw headers', () => {
    gw.logger.info({ headers: { authorization: `Bearer ${token}`, dpop: 'proof', cookie: 'a=b' } }, 'debug dump');
    const line = gw.logs.find((l) => l.msg === 'debug dump')!;
    expect(line.headers).toEqual({ authorization: '[redacted]', dpop: '[redacted]', cookie: '[redacted]' });
  });
});
