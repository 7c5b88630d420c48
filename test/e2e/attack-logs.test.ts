// Item 11 of the attack-proof request path: what a client sends must not put secrets into,
// or flood, the decision log. A denied request full of credentials and junk headers gives a
// bounded line with no credential in it; one principal looping on a denied route gets a
// budget, not an unbounded stream, and other principals' denies are still written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { parseConfig } from '../../src/config/load.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.test.local/';
const DENY_ALL = `apiVersion: zt-gateway/v1
name: closed
appliesTo: { routes: [closed] }
rules:
  - name: nobody
    effect: deny
    when: 'true'
`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
const tokens: Record<string, string> = {};

function config(decisionLog: Record<string, unknown>) {
  return {
    server: { limits: { maxHeaderBytes: 65536 } },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [{ name: 'closed', pathPrefix: '/closed/', upstream: echo.url }],
    policies: { dir, decisionLog },
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-logs-'));
  writeFileSync(join(dir, 'closed.yaml'), DENY_ALL);
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway(
    config({ allowSampleRate: 1, headers: ['user-agent', 'x-tenant'], perPrincipalBurst: 5, perPrincipalPerSecond: 0.01 }),
  );
  for (const sub of ['looper', 'bystander', 'leaky']) tokens[sub] = await idp.sign({}, { sub, aud: 'zt-gateway', expiresIn: '10m' });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

const decisionLines = (sub: string) => gw.logs.filter((l) => l.log === 'decision' && l.sub === sub);

describe('decision log', () => {
  it('records allow-listed headers only, never a credential, and stays bounded', async () => {
    const secrets = ['s3cr3t-cookie', 'k3y-value', 't0ken-value', 'p4ssword', 'apisecretvalue', 'sess-id-value'];
    const headers: Record<string, string> = {
      authorization: `Bearer ${tokens.leaky}`,
      cookie: `sid=${secrets[0]}`,
      'x-api-key': secrets[1]!,
      'x-auth-token': secrets[2]!,
      'x-db-password': secrets[3]!,
      'x-client-secret': secrets[4]!,
      'x-session': secrets[5]!,
      'x-tenant': 'acme',
      'user-agent': 'u'.repeat(5000),
    };
    for (let i = 0; i < 20; i++) headers[`x-junk-${i}`] = 'j'.repeat(500);
    const res = await rawRequest(gw.url, `/closed/${'p'.repeat(3000)}?token=${secrets[2]}`, { headers });
    expect(res.status).toBe(403);
    const [line] = decisionLines('leaky');
    expect(line).toBeDefined();
    const text = JSON.stringify(line);
    expect(text.length).toBeLessThan(8192);
    for (const secret of [...secrets, tokens.leaky!]) expect(text).not.toContain(secret);
    expect(Object.keys(line!.input.request.headers).sort()).toEqual(['user-agent', 'x-tenant']);
    expect(line!.input.request.headers['x-tenant']).toBe('acme');
    expect(line!.input.request.headers['user-agent'].length).toBeLessThanOrEqual(257);
    expect(line!.truncated).toEqual(expect.arrayContaining(['request.headers.user-agent', 'request.path']));
  });

  it('gives each principal a line budget: a loop of denies is summarised, others are still written', async () => {
    const before = decisionLines('looper').length;
    const loop = [];
    for (let i = 0; i < 40; i++) loop.push(rawRequest(gw.url, '/closed/x', { headers: { authorization: `Bearer ${tokens.looper}` } }));
    for (const res of await Promise.all(loop)) expect(res.status).toBe(403); // refused all the same
    expect(decisionLines('looper').length - before).toBeLessThanOrEqual(5);
    const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    const suppressed = Number(/^ztgw_decision_lines_suppressed_total (\d+)/m.exec(metrics)?.[1]);
    expect(suppressed).toBeGreaterThanOrEqual(35);
    const res = await rawRequest(gw.url, '/closed/x', { headers: { authorization: `Bearer ${tokens.bystander}` } });
    expect(res.status).toBe(403);
    expect(decisionLines('bystander')).toHaveLength(1);
  });

  it('keeps path-parameter values, fragments and queries out of access and decision lines', async () => {
    const denied = await rawRequest(gw.url, '/closed/x;jsessionid=SECRETJ/y;v=SECRETV?code=SECRETQ', { headers: { authorization: `Bearer ${tokens.leaky}` } });
    expect(denied.status).toBe(403);
    const refused = await rawRequest(gw.url, '/closed/x#SECRETK', { headers: { authorization: `Bearer ${tokens.leaky}` } });
    expect(refused.status).toBe(400);
    const ids = [denied.headers['x-request-id'], refused.headers['x-request-id']];
    const lines = gw.logs.filter((l) => ids.includes(l.reqId));
    expect(lines.map((l) => l.msg).sort()).toEqual(['access', 'access', 'decision']);
    expect(JSON.stringify(lines)).not.toMatch(/SECRET/);
    expect(lines.find((l) => l.msg === 'access' && l.status === 403)!.path).toBe('/closed/x;…/y;…');
    expect(lines.find((l) => l.msg === 'decision')!.truncated).toContain('request.path');
  });

  it('refuses a config that would record a credential header', () => {
    const text = stringify(config({ headers: ['user-agent', 'X-Api-Key'] }));
    expect(() => parseConfig(text, join(dir, 'gw.yaml'), {})).toThrow(/X-Api-Key.*credential/);
  });
});
