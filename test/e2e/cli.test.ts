// The ztgw command as an operator runs it: real processes, real signals, exit codes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, getPriority, tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { rawRequest } from '../helpers/http.ts';
import { freePort } from '../helpers/ports.ts';

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');
const dir = mkdtempSync(join(tmpdir(), 'ztgw-cli-'));

function ztgw(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20_000 });
}

/** Like ztgw(), without blocking the event loop (a test's own server must keep answering). */
function ztgwAsync(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((ok) => child.once('close', (status) => ok({ status, stdout, stderr })));
}

function startZtgw(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

async function waitReady(adminUrl: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`ztgw exited with ${child.exitCode}`);
    try {
      if ((await rawRequest(adminUrl, '/readyz')).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('ztgw did not become ready');
}

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: 'https://idp.test.local/' });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(idp.publicJwks()));
});
afterAll(() => echo?.close());

function goodConfig(port: number, adminPort: number, extra = '') {
  return `server:
  listen: { host: 127.0.0.1, port: ${port} }
  admin: { host: 127.0.0.1, port: ${adminPort} }
  timeouts: { shutdownMs: 5000 }
identity:
  issuers:
    - name: corp
      issuer: https://idp.test.local/
      audiences: [zt-gateway]
      algorithms: [ES256]
      jwksFile: jwks.json
routes:
  - name: echo
    pathPrefix: /echo/
    upstream: ${echo.url}
${extra}`;
}

describe('ztgw validate', () => {
  it('exits 0 on a valid config', () => {
    const file = join(dir, 'good.yaml');
    writeFileSync(file, goodConfig(8080, 9090));
    const run = ztgw(['validate', '--config', file]);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });

  it('exits 2 and names file, line and field for a bad config', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, goodConfig(8080, 9090, '    upstreem: http://typo\n'));
    const run = ztgw(['validate', '--config', file]);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(new RegExp(`${file.replace(/[.]/g, '\\.')}:16:\\d+: routes\\[0\\].*unknown field "upstreem"`));
  });

  it('exits 2 when a referenced key file is missing', () => {
    const file = join(dir, 'nokeys.yaml');
    writeFileSync(file, goodConfig(8080, 9090).replace('jwksFile: jwks.json', 'jwksFile: missing.json'));
    const run = ztgw(['validate', '--config', file]);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/nokeys\.yaml:\d+:\d+: identity\.issuers\[0\]\.jwksFile: cannot read JWKS file .*missing\.json \(ENOENT\)/);
  });

  it('exits 2 on an unknown command', () => {
    expect(ztgw(['frobnicate']).status).toBe(2);
  });
});

describe('--help and unknown options, for every command', () => {
  const commands: [string[], RegExp][] = [
    [['serve'], /^usage: ztgw serve /],
    [['validate'], /^usage: ztgw validate /],
    [['demo'], /^usage: ztgw demo \[--redis\]\n/],
    [['token'], /^usage: ztgw token /],
    [['keys'], /^usage: ztgw keys generate /],
    [['keys', 'generate'], /^usage: ztgw keys generate /],
    [['dpop'], /^usage: ztgw dpop curl /],
    [['dpop', 'curl'], /^usage: ztgw dpop curl /],
    [['device'], /^usage: ztgw device /],
    [['device', 'id'], /^usage: ztgw device id --key FILE/],
    [['device', 'enroll'], /^usage: ztgw device /],
    [['policy'], /^usage: ztgw policy /],
    [['policy', 'test'], /^usage: ztgw policy /],
    [['policy', 'replay'], /^usage: ztgw policy /],
  ];
  it.each(commands)('%j --help prints its usage and exits 0; an unknown option is one line and the usage, exit 2', (command, usage) => {
    for (const help of command.length === 1 && command[0] === 'token' ? ['--help', '-h'] : ['--help']) {
      const r = ztgw([...command, help]);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(usage);
      expect(r.stderr).toBe('');
    }
    const bad = ztgw([...command, '--no-such-option']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).not.toMatch(/TypeError|ERR_PARSE_ARGS|\n\s+at /);
    const [first, second] = bad.stderr.split('\n');
    expect(first).toMatch(/^ztgw( \w+)?: .*(--no-such-option|--config FILE is required)/);
    expect(second).toBe('');
    expect(bad.stderr).toMatch(/usage: ztgw/);
  }, 30_000);
});

describe('ztgw --version', () => {
  it("prints package.json's version, exit 0", () => {
    const { version } = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string };
    const r = ztgw(['--version']);
    expect(r).toMatchObject({ status: 0, stdout: `ztgw ${version}\n`, stderr: '' });
  });
});

// A port in use once ended in Node's stack trace (exit 1): now one line naming the port and
// what moves it, still exit 1 (the machine's state, not a bad config), nothing else.
describe('a port in use', () => {
  async function holding<T>(fn: (port: number) => Promise<T>): Promise<T> {
    const blocker = createServer();
    await new Promise<void>((ok) => blocker.listen(0, '127.0.0.1', ok));
    try {
      return await fn((blocker.address() as AddressInfo).port);
    } finally {
      blocker.close();
    }
  }

  it.each(['ZTGW_PORT', 'ZTGW_ADMIN_PORT', 'ZTGW_ECHO_PORT'])('demo: names the port and %s, exit 1, no stack trace', async (variable) =>
    holding(async (port) => {
      const env = { ZTGW_PORT: String(await freePort()), ZTGW_ADMIN_PORT: String(await freePort()), ZTGW_ECHO_PORT: String(await freePort()), [variable]: String(port) };
      const run = await ztgwAsync(['demo'], env);
      expect(run.status).toBe(1);
      const lines = run.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{')); // log lines aside
      expect(lines).toEqual([`ztgw: port ${port} on 127.0.0.1 is in use by another process; set ${variable} to another port (or stop that process)`]);
    }),
    30_000);

  it('serve: names the port and the config setting that moves it', async () =>
    holding(async (port) => {
      const file = join(dir, 'port-in-use.yaml');
      writeFileSync(file, goodConfig(await freePort(), port));
      const run = await ztgwAsync(['serve', '--config', file]);
      expect(run.status).toBe(1);
      expect(run.stderr).toContain(`ztgw: port ${port} on 127.0.0.1 is in use by another process; set server.admin.port in ${file} to another port`);
      expect(run.stderr).not.toMatch(/\n\s+at /);
    }));
});

describe('ztgw serve', () => {
  it('refuses to start on an invalid config, exit 2, nothing listening', async () => {
    const port = await freePort();
    const file = join(dir, 'bad-serve.yaml');
    writeFileSync(file, goodConfig(port, await freePort()).replace('algorithms: [ES256]', 'algorithms: [none]'));
    const run = ztgw(['serve', '--config', file]);
    expect(run.status).toBe(2);
    expect(run.stderr).toContain('identity.issuers[0].algorithms[0]');
    await expect(rawRequest(`http://127.0.0.1:${port}`, '/echo/x')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('drains in-flight requests on SIGTERM, then exits 0', async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const file = join(dir, 'drain.yaml');
    writeFileSync(file, goodConfig(port, adminPort));
    const child = startZtgw(['serve', '--config', file]);
    const exited = exitOf(child);
    await waitReady(`http://127.0.0.1:${adminPort}`, child);
    const token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway' });
    const inFlight = rawRequest(`http://127.0.0.1:${port}`, '/echo/slow?delay=700', { headers: { authorization: `Bearer ${token}` } });
    await new Promise((r) => setTimeout(r, 200));
    child.kill('SIGTERM');
    const res = await inFlight;
    expect(res.status).toBe(200);
    expect(await exited).toBe(0);
  }, 30_000);
});

// libuv's pool checks DPoP signatures: one thread per core, at least 2, unless the
// operator chose, and below the event loop's priority (src/cli/thread-pool.ts). Its
// threads are named, so /proc shows them and their nice values.
describe.runIf(process.platform === 'linux')('ztgw serve: libuv thread pool', () => {
  const threads = (pid: number): { tid: string; name: string; nice: number }[] =>
    readdirSync(`/proc/${pid}/task`).map((tid) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      // proc(5): nice is field 19, the 17th after the parenthesised command name.
      const nice = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      return { tid, name: readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim(), nice };
    });

  /** The pool's threads' nice values and the main thread's, once the pool has settled. */
  async function poolOf(env: NodeJS.ProcessEnv): Promise<{ pool: number[]; main: number }> {
    const [port, adminPort] = [await freePort(), await freePort()];
    const file = join(dir, `pool-${port}.yaml`);
    writeFileSync(file, goodConfig(port, adminPort));
    const child = startZtgw(['serve', '--config', file], env);
    const exited = exitOf(child);
    try {
      await waitReady(`http://127.0.0.1:${adminPort}`, child);
      // One proxied request: whatever the pool is for, it has started by then.
      const token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway' });
      expect((await rawRequest(`http://127.0.0.1:${port}`, '/echo/x', { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
      // Relative to the process's own nice value, which it inherits from us.
      const expectedNice = Math.min(19, getPriority() + (env.ZTGW_POOL_NICE === '0' ? 0 : 10));
      let now = threads(child.pid!);
      // The priority is lowered just after start-up; give it a moment.
      for (let i = 0; i < 50 && !now.filter((t) => t.name === 'libuv-worker').every((t) => t.nice === expectedNice); i++) {
        await new Promise((r) => setTimeout(r, 40));
        now = threads(child.pid!);
      }
      return { pool: now.filter((t) => t.name === 'libuv-worker').map((t) => t.nice), main: now.find((t) => t.tid === String(child.pid))!.nice };
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  }

  it('has one thread per core, never fewer than 2, each 10 nice levels below the event loop', async () => {
    const { pool, main } = await poolOf({ UV_THREADPOOL_SIZE: '', ZTGW_POOL_NICE: '' });
    expect(main).toBe(getPriority());
    expect(pool).toEqual(Array(Math.max(2, availableParallelism())).fill(Math.min(19, main + 10)));
  });

  it("keeps the operator's UV_THREADPOOL_SIZE and ZTGW_POOL_NICE", async () => {
    const { pool, main } = await poolOf({ UV_THREADPOOL_SIZE: '3', ZTGW_POOL_NICE: '0' });
    expect(pool).toEqual([main, main, main]);
  });

  it('refuses a ZTGW_POOL_NICE that is not 0-19 before it starts, exit 2', () => {
    const run = ztgw(['serve', '--config', join(dir, 'never-read.yaml')], { ZTGW_POOL_NICE: 'low' });
    expect(run.status).toBe(2);
    expect(run.stderr).toContain('ZTGW_POOL_NICE must be an integer from 0 to 19, not "low"');
  });
});

describe('policies through the CLI', () => {
  const policy = (groups: string) => `apiVersion: zt-gateway/v1
name: echo-access
appliesTo: { routes: [echo] }
rules:
  - name: team
    effect: allow
    when: 'identity.groups.exists(g, g in [${groups}])'
`;
  const withPolicies = (port: number, adminPort: number, policyDir: string) =>
    goodConfig(port, adminPort, `policies:\n  dir: ${policyDir}\n  decisionLog: { allowSampleRate: 1, file: decisions-${policyDir}.jsonl }\n`);

  it('refuses to serve on a broken policy set: exit 2 with file:line:col', async () => {
    mkdirSync(join(dir, 'broken-policies'), { recursive: true });
    writeFileSync(join(dir, 'broken-policies', 'echo.yaml'), policy('"eng"').replace('identity.groups', 'identity.grups'));
    const file = join(dir, 'broken-policies.yaml');
    writeFileSync(file, withPolicies(await freePort(), await freePort(), 'broken-policies'));
    const run = ztgw(['serve', '--config', file]);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/broken-policies\/echo\.yaml:\d+:\d+: .*grups/);
  });

  it('writes decisions a replay against a candidate set can flip', async () => {
    for (const [name, groups] of [['live-policies', '"eng", "ops"'], ['candidate-policies', '"eng"']] as const) {
      mkdirSync(join(dir, name), { recursive: true });
      writeFileSync(join(dir, name, 'echo.yaml'), policy(groups));
    }
    const [port, adminPort] = [await freePort(), await freePort()];
    const file = join(dir, 'live.yaml');
    writeFileSync(file, withPolicies(port, adminPort, 'live-policies'));
    const child = startZtgw(['serve', '--config', file]);
    const exited = exitOf(child);
    await waitReady(`http://127.0.0.1:${adminPort}`, child);
    for (const [sub, groups] of [['olga', ['ops']], ['erin', ['eng']], ['sam', ['sales']]] as const) {
      const token = await idp.sign({ groups }, { sub, aud: 'zt-gateway' });
      await rawRequest(`http://127.0.0.1:${port}`, '/echo/x', { headers: { authorization: `Bearer ${token}` } });
    }
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const log = join(dir, 'decisions-live-policies.jsonl');
    const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.sub, l.effect])).toEqual([['olga', 'allow'], ['erin', 'allow'], ['sam', 'deny']]);
    const replay = ztgw(['policy', 'replay', '--log', log, '--policies', join(dir, 'candidate-policies'), '--json']);
    expect(replay.status).toBe(0);
    const report = JSON.parse(replay.stdout);
    expect(report).toMatchObject({ records: 3, unchanged: 2 });
    expect(report.flips.allowToDeny.map((f: { sub: string }) => f.sub)).toEqual(['olga']);
    expect(report.flips.denyToAllow).toEqual([]);
  }, 30_000);
});

describe('ztgw device', () => {
  it('enrolls, lists and revokes devices in the registry the config names', () => {
    const file = join(dir, 'devices-cli.yaml');
    writeFileSync(file, goodConfig(8080, 9090, 'devices:\n  registry: { file: cli-devices.yaml }\n'));
    const id = 'A'.repeat(43);
    const enroll = ztgw(['device', 'enroll', '--config', file, '--id', id, '--owner', 'alice', '--managed', '--trust', 'high']);
    expect(enroll.stderr).toBe('');
    expect(enroll.status).toBe(0);
    const listed = JSON.parse(ztgw(['device', 'list', '--json', '--config', file]).stdout);
    expect(listed).toEqual([expect.objectContaining({ id, owner: 'alice', posture: expect.objectContaining({ managed: true, trustLevel: 'high' }) })]);
    expect(ztgw(['device', 'revoke', '--config', file, '--id', id]).status).toBe(0);
    expect(JSON.parse(ztgw(['device', 'list', '--json', '--config', file]).stdout)[0].revokedAt).toBeDefined();
    expect(ztgw(['device', 'enroll', '--config', file, '--id', 'short', '--owner', 'alice']).status).toBe(2);
  }, 30_000); // five CLI processes, ~1 s each to start
});

describe('the demo (npm start) and dev tokens (npm run token)', () => {
  it('serves /echo/ with a dev token and refuses it without one', async () => {
    const env = { ZTGW_PORT: String(await freePort()), ZTGW_ADMIN_PORT: String(await freePort()), ZTGW_ECHO_PORT: String(await freePort()) };
    const child = startZtgw(['demo'], env);
    const exited = exitOf(child);
    try {
      await waitReady(`http://127.0.0.1:${env.ZTGW_ADMIN_PORT}`, child);
      const token = ztgw(['token', '--sub', 'alice', '--groups', 'eng,ops']);
      expect(token.status).toBe(0);
      expect(token.stdout.trim()).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      const gateway = `http://127.0.0.1:${env.ZTGW_PORT}`;
      const ok = await rawRequest(gateway, '/echo/hi', { headers: { authorization: `Bearer ${token.stdout.trim()}` } });
      expect(ok.status).toBe(200);
      expect(ok.json().url).toBe('/echo/hi');
      expect((await rawRequest(gateway, '/echo/hi')).status).toBe(401);
    } finally {
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    // Two Node processes start here (the demo and `token`): seconds each on a busy 2-core machine.
  }, 30_000);

  it('token refuses to run without --sub', () => {
    expect(ztgw(['token']).status).toBe(2);
  });
});
