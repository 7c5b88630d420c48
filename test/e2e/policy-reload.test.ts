// A policy-dir edit on a running gateway swaps in a Runtime that differs from the running
// one only in its policy set and the authz stage: routes, issuers and the other stages are
// the same objects (a thousand-route config is not recompiled for a policy edit), and the
// new stage decides the next request.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const SECRET = 'policy-reload-test-secret-0123456789';
const ISS = 'https://idp.test.local/';
const policy = (effect: 'allow' | 'deny') =>
  `apiVersion: zt-gateway/v1\nname: code\nappliesTo: { routes: [code] }\nrules:\n  - name: engineers\n    effect: ${effect}\n    when: '"eng" in identity.groups'\n`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let gw: TestGateway;
let dir: string;
let token: string;

beforeAll(async () => {
  echo = await startEchoServer();
  dir = mkdtempSync(join(tmpdir(), 'zt-policy-reload-'));
  mkdirSync(join(dir, 'policies'));
  writeFileSync(join(dir, 'policies', 'code.yaml'), policy('allow'));
  gw = await startTestGateway(
    {
      identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['HS256'], secret: SECRET }] },
      routes: [
        { name: 'code', pathPrefix: '/code/', upstream: echo.url },
        { name: 'docs', pathPrefix: '/docs/', upstream: echo.url },
      ],
      policies: { dir: 'policies', reloadDebounceMs: 20 },
    },
    { dir },
  );
  token = await new SignJWT({ groups: ['eng'] })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISS)
    .setAudience('zt-gateway')
    .setSubject('alice')
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(new TextEncoder().encode(SECRET));
});

afterAll(async () => {
  await gw?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

const status = async () => (await fetch(`${gw.url}/code/x`, { headers: { authorization: `Bearer ${token}` } })).status;

it('a policy edit replaces the policy set and the authz stage, keeps every other part, and decides the next request', async () => {
  expect(await status()).toBe(200);
  const running = gw.holder.current;
  writeFileSync(join(dir, 'policies', 'code.yaml'), policy('deny'));
  const deadline = Date.now() + 10_000;
  while (gw.holder.current === running && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  const next = gw.holder.current;
  expect(next).not.toBe(running);
  expect(next.policies!.evaluator.set.hash).not.toBe(running.policies!.evaluator.set.hash);
  expect(next.config).toBe(running.config);
  expect(next.routes).toBe(running.routes);
  expect(next.issuers).toBe(running.issuers);
  const authz = running.parts.pipeline.authz!;
  running.stages.forEach((stage, i) => expect(next.stages[i]).toBe(stage === authz ? next.parts.pipeline.authz : stage));
  expect(next.parts.pipeline.authz).not.toBe(authz);
  expect(await status()).toBe(403);
  expect(gw.logs.some((l) => l.msg === 'policies reloaded')).toBe(true);
});
