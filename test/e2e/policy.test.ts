// Policies in the gateway: decisions on real requests, the decision log, obligations, and
// hot reload under load (a broken edit keeps the old set; a good one lands within 2 s).
import { afterAll, beforeAll, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.test.local/';
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let quarantine: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
const tokens: Record<string, string> = {};

const CODE_POLICY = `apiVersion: zt-gateway/v1
name: code-readers
appliesTo: { routes: [code] }
rules:
  - name: engineers-read
    effect: allow
    when: '"eng" in identity.groups && request.method in ["GET", "HEAD"]'
    obligations:
      headers: { x-team: engineering }
  - name: contractors-quarantined
    effect: allow
    when: '"contractor" in identity.groups'
    obligations:
      upstream: quarantine
  - name: no-interns-on-secrets
    effect: deny
    when: '"intern" in identity.groups && request.path.startsWith("/code/secrets")'
  - name: admin-needs-mfa
    effect: step_up
    when: 'request.path.startsWith("/code/admin") && !("mfa" in identity.amr)'
    stepUp: { acrValues: [phr, mfa], maxAgeS: 300 }
`;

const BROKEN_POLICY = CODE_POLICY.replace('"eng" in identity.groups', '"eng" in identity.groupz');
const TIGHTER_POLICY = CODE_POLICY.replace('"eng" in identity.groups && ', '"sre" in identity.groups && ');

const REPORT_ONLY = `apiVersion: zt-gateway/v1
name: try-require-sre
mode: report-only
appliesTo: { routes: [code] }
rules:
  - name: only-sre
    effect: deny
    when: '!("sre" in identity.groups)'
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-policy-'));
  writeFileSync(join(dir, 'code.yaml'), CODE_POLICY);
  writeFileSync(join(dir, 'report-only.yaml'), REPORT_ONLY);
  echo = await startEchoServer();
  quarantine = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'code', pathPrefix: '/code/', upstream: echo.url },
      { name: 'other', pathPrefix: '/other/', upstream: echo.url },
    ],
    upstreams: { quarantine: quarantine.url },
    policies: { dir, decisionLog: { allowSampleRate: 1 }, reloadDebounceMs: 50 },
  });
  for (const [sub, groups] of [['alice', ['eng']], ['ivan', ['eng', 'intern']], ['carol', ['contractor']], ['hank', ['hr']], ['sam', ['sre']]] as const) {
    tokens[sub] = await idp.sign({ groups }, { sub, aud: 'zt-gateway', expiresIn: '10m' });
  }
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  await quarantine?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  echo.requests.length = 0;
  quarantine.requests.length = 0;
});

const as = (sub: string, path: string, method = 'GET') => rawRequest(gw.url, path, { method, headers: { authorization: `Bearer ${tokens[sub]}` } });

describe('obligation headers come from the policy only', () => {
  it("a client's own copy of an obligation header never reaches an upstream", async () => {
    // On the route where the deciding rule sets it, the policy's value replaces the client's…
    const decided = await rawRequest(gw.url, '/code/repo', { headers: { authorization: `Bearer ${tokens.alice}`, 'x-team': 'forged' } });
    expect(decided.json().headers['x-team']).toBe('engineering');
    // …where no rule sets it (another allow rule decided), the client's copy is dropped, not passed on.
    const other = await rawRequest(gw.url, '/code/repo', { headers: { authorization: `Bearer ${tokens.carol}`, 'x-team': 'engineering' } });
    expect(other.status).toBe(200);
    expect(quarantine.requests[0]!.headers['x-team']).toBeUndefined();
  });
});

describe('policy decisions', () => {
  it('allows what a rule allows, with its obligations, and names the policy set in the assertion', async () => {
    const res = await as('alice', '/code/repo');
    expect(res.status).toBe(200);
    const seen = res.json().headers;
    expect(seen['x-team']).toBe('engineering');
    const { payload } = await jwtVerify(seen['x-zt-assertion'], createRemoteJWKSet(new URL(`${gw.url}/.well-known/zt-jwks.json`)));
    const hash = gw.services.policies!.current.set.hash;
    expect(payload.pol).toBe(hash);
    const line = gw.logs.findLast((l) => l.log === 'decision' && l.reqId === res.headers['x-request-id']);
    expect(line).toMatchObject({ effect: 'allow', policySet: hash, rules: [{ policy: 'code-readers', rule: 'engineers-read' }] });
    // The report-only policy would have denied: recorded, not enforced.
    expect(line?.reportOnly).toEqual([expect.objectContaining({ policy: 'try-require-sre', wouldBe: 'deny' })]);
  });

  it('denies by default when no rule allows (403), and the upstream sees nothing', async () => {
    const res = await as('hank', '/code/repo');
    expect(res.status).toBe(403);
    expect(res.json().code).toBe('ERR_ACCESS_DENIED');
    expect(echo.requests).toHaveLength(0);
    const line = gw.logs.findLast((l) => l.log === 'decision' && l.reqId === res.headers['x-request-id']);
    expect(line).toMatchObject({ effect: 'deny', rules: [] });
  });

  it('lets a matching deny override an allow', async () => {
    expect((await as('ivan', '/code/repo')).status).toBe(200);
    echo.requests.length = 0;
    const res = await as('ivan', '/code/secrets/key');
    expect(res.status).toBe(403);
    expect(echo.requests).toHaveLength(0);
  });

  it('asks for step-up with an RFC 9470 challenge', async () => {
    const res = await as('alice', '/code/admin/settings');
    expect(res.status).toBe(401);
    expect(res.json().code).toBe('ERR_STEP_UP_REQUIRED');
    expect(res.headers['www-authenticate']).toBe(
      'Bearer realm="zt-gateway", error="insufficient_user_authentication", error_description="A stronger or more recent authentication is required", acr_values="phr mfa", max_age=300',
    );
    expect(echo.requests).toHaveLength(0);
  });

  it('sends a request to the upstream an obligation names', async () => {
    const res = await as('carol', '/code/repo');
    expect(res.status).toBe(200);
    expect(quarantine.requests).toHaveLength(1);
    expect(echo.requests).toHaveLength(0);
  });

  it('denies on a route no policy applies to', async () => {
    expect((await as('alice', '/other/x')).status).toBe(403);
  });

  it('counts decisions by effect', async () => {
    const metrics = (await rawRequest(gw.adminUrl, '/metrics')).text;
    expect(metrics).toMatch(/ztgw_policy_decisions_total\{effect="allow"\} [1-9]/);
    expect(metrics).toMatch(/ztgw_policy_decisions_total\{effect="deny"\} [1-9]/);
  });
});

describe('hot reload under load', () => {
  /** Sends requests from `workers` loops until stopped; records every outcome. */
  function load(workers = 4) {
    const outcomes: { sub: string; status: number | 'error'; at: number }[] = [];
    let running = true;
    const loops = Array.from({ length: workers }, async (_, i) => {
      const sub = i % 2 === 0 ? 'alice' : 'hank';
      while (running) {
        const status = await as(sub, '/code/repo').then(
          (r) => r.status,
          () => 'error' as const,
        );
        outcomes.push({ sub, status, at: Date.now() });
      }
    });
    return {
      outcomes,
      async stop() {
        running = false;
        await Promise.all(loops);
      },
    };
  }

  it('keeps the last good set when an edit is broken, and applies a good edit within 2 s, dropping nothing', async () => {
    const traffic = load();
    // However this test ends (a failed expect, its timeout), the loops stop: left running they
    // kept loading the shared gateway and echo server through every later test of the file.
    onTestFinished(() => traffic.stop());
    await new Promise((r) => setTimeout(r, 300));
    const goodHash = gw.services.policies!.current.set.hash;

    writeFileSync(join(dir, 'code.yaml'), BROKEN_POLICY);
    await new Promise((r) => setTimeout(r, 700));
    expect(gw.services.policies!.current.set.hash).toBe(goodHash);
    const ready = (await rawRequest(gw.adminUrl, '/readyz')).json();
    expect(ready.checks.find((c: { name: string }) => c.name === 'policies').detail).toMatch(/code\.yaml:\d+:\d+/);
    expect((await rawRequest(gw.adminUrl, '/metrics')).text).toMatch(/ztgw_policy_reloads_total\{result="failed"\} [1-9]/);

    const editedAt = Date.now();
    writeFileSync(join(dir, 'code.yaml'), TIGHTER_POLICY);
    let appliedAt: number | undefined;
    while (Date.now() - editedAt < 3000) {
      if ((await as('alice', '/code/repo')).status === 403) {
        appliedAt = Date.now();
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    await new Promise((r) => setTimeout(r, 200));
    await traffic.stop();

    expect(appliedAt, 'the good edit never took effect').toBeDefined();
    expect(appliedAt! - editedAt).toBeLessThan(2000);
    const { outcomes } = traffic;
    expect(outcomes.length).toBeGreaterThan(20);
    expect(outcomes.filter((o) => o.status === 'error' || (typeof o.status === 'number' && o.status >= 500))).toEqual([]);
    // Until the good edit, the old set decided everything: alice allowed, hank denied.
    const beforeEdit = outcomes.filter((o) => o.at < editedAt);
    expect(beforeEdit.filter((o) => o.sub === 'alice').every((o) => o.status === 200)).toBe(true);
    expect(beforeEdit.filter((o) => o.sub === 'hank').every((o) => o.status === 403)).toBe(true);
    // hank was never let in by any set.
    expect(outcomes.filter((o) => o.sub === 'hank').every((o) => o.status === 403)).toBe(true);
    expect(gw.services.policies!.current.set.hash).not.toBe(goodHash);
    writeFileSync(join(dir, 'code.yaml'), CODE_POLICY);
  }, 20_000);
});
