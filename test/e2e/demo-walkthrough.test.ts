// The README's device-trust walk-through, command by command, as a newcomer types it: each
// step is a ztgw child process against `ztgw demo` on free ports, with the demo's state (dev
// issuer, device registry) in a private ZTGW_DEMO_DIR so nothing leaks into .ztgw/.
import { describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { rawRequest } from '../helpers/http.ts';
import { freePort } from '../helpers/ports.ts';
import { startRedis } from '../helpers/redis.ts';

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');
const DEMO_CONFIG = resolve(import.meta.dirname, '../../deploy/demo.yaml');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function ztgw(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((ok) => child.once('close', (status) => ok({ status, stdout, stderr })));
}

async function waitReady(adminUrl: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`ztgw demo exited with ${child.exitCode}`);
    try {
      if ((await rawRequest(adminUrl, '/readyz')).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('ztgw demo did not become ready');
}

/**
 * The gateway picks up a registry change from the file watcher, a moment after the command
 * that wrote it exits: repeat the request until it answers `status` (deadline 10 s).
 */
async function untilStatus(status: number, attempt: () => Promise<Run>): Promise<Run> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const run = await attempt();
    if (run.stdout.startsWith(`HTTP ${status} `) || Date.now() > deadline) return run;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('the device-trust walk-through (README)', () => {
  it('device key → enroll with posture → bound token → /payroll/ allowed → revoke → refused', async () => {
    const demoDir = mkdtempSync(join(tmpdir(), 'ztgw-walkthrough-'));
    const env = {
      ZTGW_DEMO_DIR: demoDir,
      ZTGW_PORT: String(await freePort()),
      ZTGW_ADMIN_PORT: String(await freePort()),
      ZTGW_ECHO_PORT: String(await freePort()),
    };
    const gateway = `http://127.0.0.1:${env.ZTGW_PORT}`;
    const demo = spawn(process.execPath, [CLI, 'demo'], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((ok) => demo.once('exit', ok));
    try {
      await waitReady(`http://127.0.0.1:${env.ZTGW_ADMIN_PORT}`, demo);
      const key = join(demoDir, 'laptop.jwk');

      // 1. A device key, and the fingerprint to enroll it by.
      const made = await ztgw(['keys', 'generate', '--out', key], env);
      expect(made.status, made.stderr).toBe(0);
      expect(statSync(key).mode & 0o777).toBe(0o600);
      const id = await ztgw(['device', 'id', '--key', key], env);
      expect(id.status, id.stderr).toBe(0);
      const fingerprint = id.stdout.trim();
      expect(fingerprint).toMatch(/^[\w-]{43}$/);
      expect(made.stdout).toContain(`thumbprint ${fingerprint}`);

      // 2. A token bound to that key, for alice in hr.
      const minted = await ztgw(['token', '--sub', 'alice', '--groups', 'hr', '--dpop-key', key], env);
      expect(minted.status, minted.stderr).toBe(0);
      const token = minted.stdout.trim();
      const payrollWithProof = () => ztgw(['dpop', 'curl', '--key', key, '--token', token, `${gateway}/payroll/payslips`], env);

      // Not enrolled yet: payroll's policy wants a device enrolled to alice.
      const early = await payrollWithProof();
      expect(early.stdout).toMatch(/^HTTP 403 /);
      expect(early.stdout).toContain('"code":"ERR_ACCESS_DENIED"');
      expect(early.status).toBe(1);
      // The bound token as a plain bearer token is refused: without the key it is useless.
      expect((await rawRequest(gateway, '/payroll/payslips', { headers: { authorization: `Bearer ${token}` } })).status).toBe(401);

      // 3. Enroll the device to alice, with posture.
      const enrolled = await ztgw(
        ['device', 'enroll', '--config', DEMO_CONFIG, '--id', fingerprint, '--owner', 'alice', '--managed', '--disk-encrypted', '--os', 'macOS', '--trust', 'high'],
        env,
      );
      expect(enrolled.status, enrolled.stderr).toBe(0);
      expect(readFileSync(join(demoDir, 'devices.yaml'), 'utf8')).toContain(fingerprint);

      // 4. /payroll/ with a fresh proof: allowed, and the upstream sees the device in the assertion.
      const allowed = await untilStatus(200, payrollWithProof);
      expect(allowed.stdout).toMatch(/^HTTP 200 /);
      expect(allowed.status).toBe(0);
      const assertion = JSON.parse(allowed.stdout.slice(allowed.stdout.indexOf('\n') + 1)).headers['x-zt-assertion'] as string;
      const claims = JSON.parse(Buffer.from(assertion.split('.')[1]!, 'base64url').toString());
      expect(claims).toMatchObject({ sub: 'alice', dev: { id: fingerprint, bind: 'dpop', enrolled: true, owner_match: true, posture: { managed: true, trust: 'high' } } });

      // 5. Revoke it: refused, at once and everywhere.
      const revoked = await ztgw(['device', 'revoke', '--config', DEMO_CONFIG, '--id', fingerprint], env);
      expect(revoked.status, revoked.stderr).toBe(0);
      const refused = await untilStatus(403, payrollWithProof);
      expect(refused.stdout).toMatch(/^HTTP 403 /);
      expect(refused.stdout).toContain('"code":"ERR_DEVICE_REVOKED"');
      expect(refused.status).toBe(1);
    } finally {
      demo.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    // Nine Node processes: about 15 s on an idle laptop, more on a busy 2-core machine.
  }, 60_000);
});

describe('the rate-limit demo (README)', () => {
  // The README's loop: six curls to /limited/ as alice, in memory and with --redis (the
  // counters in a redis-server of this test's own, given as ZTGW_REDIS_URL).
  for (const mode of ['memory', 'redis'] as const) {
    it(`answers the 6th request within 10 s with 429, Retry-After and the RateLimit headers (${mode})`, async () => {
      const redis = mode === 'redis' ? await startRedis() : undefined;
      const demoDir = mkdtempSync(join(tmpdir(), 'ztgw-limits-demo-'));
      const env = {
        ZTGW_DEMO_DIR: demoDir,
        ZTGW_PORT: String(await freePort()),
        ZTGW_ADMIN_PORT: String(await freePort()),
        ZTGW_ECHO_PORT: String(await freePort()),
        // A deadline a busy test machine never misses: a check past it would count locally.
        ...(redis && { ZTGW_REDIS_URL: redis.url, ZTGW_LIMITS_TIMEOUT_MS: '2000' }),
      };
      const demo = spawn(process.execPath, [CLI, 'demo', ...(redis ? ['--redis'] : [])], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise<number | null>((ok) => demo.once('exit', ok));
      try {
        await waitReady(`http://127.0.0.1:${env.ZTGW_ADMIN_PORT}`, demo);
        const minted = await ztgw(['token', '--sub', 'alice', '--groups', 'eng'], env);
        expect(minted.status, minted.stderr).toBe(0);
        const headers = { authorization: `Bearer ${minted.stdout.trim()}` };
        const answers = [];
        for (let i = 0; i < 6; i++) answers.push(await rawRequest(`http://127.0.0.1:${env.ZTGW_PORT}`, '/limited/hello', { headers }));
        expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 429]);
        const last = answers[5]!;
        expect(Number(last.headers['retry-after'])).toBeGreaterThanOrEqual(1);
        expect(last.headers['ratelimit-policy']).toBe('"demo-five";q=5;w=10');
        expect(last.headers.ratelimit).toMatch(/^"demo-five";r=0;t=\d+$/);
        expect(last.json()).toMatchObject({ code: 'ERR_RATE_LIMITED' });
        const ready = (await rawRequest(`http://127.0.0.1:${env.ZTGW_ADMIN_PORT}`, '/readyz')).json();
        expect(ready.checks).toContainEqual(expect.objectContaining({ name: 'rate-limit-store', detail: mode }));
      } finally {
        demo.kill('SIGTERM');
        expect(await exited).toBe(0);
        await redis?.stop();
      }
    }, 40_000);
  }
});
