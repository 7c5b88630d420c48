// A running gateway whose policy directory receives adversarial and random edits: every
// edit is compiled by the hot reload (the directory watcher's timer), each bad one is
// reported and the last good set kept, and the gateway keeps answering with it. Before,
// `request.constructor` in a condition made the reload throw inside the timer and the
// process exited; here that would surface as an uncaught exception and fail the run.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { adversarialConditions, createFuzzer } from '../helpers/cel-fuzz.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { random } from '../helpers/random.ts';

const ISS = 'https://idp.test.local/';
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
const tokens: Record<string, string> = {};

const GOOD = `apiVersion: zt-gateway/v1
name: code-readers
appliesTo: { routes: [code] }
rules:
  - name: engineers
    effect: allow
    when: '"eng" in identity.groups'
`;

/** A policy for the other route, so that a random condition that happens to compile changes nothing on "code". */
const other = (name: string, when: string) => `apiVersion: zt-gateway/v1
name: ${name}
appliesTo: { routes: [other] }
rules:
  - name: r
    effect: deny
    when: ${JSON.stringify(when)}
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-policy-fuzz-'));
  writeFileSync(join(dir, 'code.yaml'), GOOD);
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'code', pathPrefix: '/code/', upstream: echo.url },
      { name: 'other', pathPrefix: '/other/', upstream: echo.url },
    ],
    policies: { dir, reloadDebounceMs: 50 },
  });
  for (const [sub, groups] of [['alice', ['eng']], ['hank', ['hr']]] as const) {
    tokens[sub] = await idp.sign({ groups }, { sub, aud: 'zt-gateway', expiresIn: '10m' });
  }
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

const as = (sub: string) => rawRequest(gw.url, '/code/repo', { headers: { authorization: `Bearer ${tokens[sub]}` } });

/** Waits until the reload has seen `file`: it failed naming it, or the set now holds it. A deadline far above the debounce. */
async function reloaded(file: string): Promise<'failed' | 'ok'> {
  const source = gw.services.policies!;
  const deadline = Date.now() + 5000;
  for (;;) {
    if (source.lastError?.includes(file)) return 'failed';
    if (source.current.set.files.some((f) => f.endsWith(file)) && source.lastError === undefined) return 'ok';
    if (Date.now() > deadline) throw new Error(`no reload saw ${file}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a running gateway under adversarial policy edits', () => {
  it('reports every bad edit with file:line, keeps the last good set and keeps answering with it', async () => {
    const good = gw.services.policies!.current.set.hash;
    const conditions = [
      // The edits that crashed the process or passed the checker before.
      'request.constructor == "x"',
      'has(request.toString)',
      'identity.__proto__ == null',
      'device.posture.valueOf',
      // Nesting, length and literals past their limits.
      ...adversarialConditions().filter((c) => c.length < 40_000 && (c.includes('((((') || c.includes('+ 1 +') || c.includes('99999') || c.includes('.a.a.a'))),
    ];
    for (const [n, when] of conditions.entries()) {
      const file = `bad-${n}.yaml`;
      writeFileSync(join(dir, file), GOOD.replace('name: code-readers', `name: bad-${n}`).replace(`'"eng" in identity.groups'`, JSON.stringify(when)));
      expect(await reloaded(file), when.slice(0, 60)).toBe('failed');
      expect(gw.services.policies!.lastError).toMatch(new RegExp(`${file}:7:\\d+: rules\\[0\\]\\.when: CEL (syntax|type) error`));
      expect(gw.services.policies!.current.set.hash).toBe(good);
      expect((await as('alice')).status).toBe(200);
      expect((await as('hank')).status).toBe(403);
      unlinkSync(join(dir, file));
    }
    const ready = (await rawRequest(gw.adminUrl, '/readyz')).json();
    expect(ready.checks.find((c: { name: string }) => c.name === 'policies').detail).toMatch(/bad-\d+\.yaml:7:\d+/);
    expect((await rawRequest(gw.adminUrl, '/metrics')).text).toMatch(/ztgw_policy_reloads_total\{result="failed"\} ([1-9]\d+|[4-9])/);
  }, 60_000);

  it('random conditions (seeded) through the live reload: every one reported, the gateway up, "code" unchanged', async () => {
    const fuzzer = createFuzzer(random(17));
    const outcomes: string[] = [];
    for (let n = 0; n < 12; n++) {
      const file = `fuzz-${n}.yaml`;
      writeFileSync(join(dir, file), other(`fuzz-${n}`, fuzzer.condition()));
      outcomes.push(await reloaded(file));
      expect((await as('alice')).status).toBe(200);
      expect((await as('hank')).status).toBe(403);
      unlinkSync(join(dir, file));
    }
    expect(outcomes).toContain('failed');
    // A good edit still lands: the reload path works after all of this.
    writeFileSync(join(dir, 'code.yaml'), GOOD.replace('"eng" in identity.groups', '"hr" in identity.groups'));
    const deadline = Date.now() + 5000;
    while ((await as('hank')).status !== 200) {
      if (Date.now() > deadline) throw new Error('the good edit never took effect');
      await new Promise((r) => setTimeout(r, 25));
    }
    expect((await as('alice')).status).toBe(403);
    expect((await rawRequest(gw.adminUrl, '/healthz')).status).toBe(200);
  }, 60_000);
});
