// The risk model across reloads and failures, in a real gateway: a changed file is swapped in,
// a bad one is refused while the running model keeps scoring (and /readyz says so), and a
// gateway configured `onModelError: degraded` starts without a model and serves unscored.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.test.local/';
const MODELS = resolve(import.meta.dirname, '../../models');
const ALLOW = `apiVersion: zt-gateway/v1
name: all
rules:
  - name: everyone
    effect: allow
    when: 'true'
`;

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let dir: string;
let token: string;
const gateways: TestGateway[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-risk-reload-'));
  writeFileSync(join(dir, 'all.yaml'), ALLOW);
  copyFileSync(join(MODELS, 'anomaly.onnx'), join(dir, 'model.onnx'));
  copyFileSync(join(MODELS, 'anomaly.meta.json'), join(dir, 'model.meta.json'));
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  token = await idp.sign({ groups: [] }, { sub: 'alice', aud: 'zt-gateway', expiresIn: '10m' });
});
afterAll(async () => {
  for (const gw of gateways) await gw.close();
  await jwks?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(risk: Record<string, unknown>): Promise<TestGateway> {
  const gw = await startTestGateway(
    {
      identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
      routes: [{ name: 'api', pathPrefix: '/api/', upstream: echo.url }],
      policies: { dir, decisionLog: { allowSampleRate: 1, perPrincipalPerSecond: 10_000, perPrincipalBurst: 100_000 } },
      risk,
    },
    { dir },
  );
  gateways.push(gw);
  return gw;
}

/** One request; the risk its decision line recorded. */
async function scored(gw: TestGateway): Promise<Record<string, unknown>> {
  const res = await rawRequest(gw.url, '/api/x', { headers: { authorization: `Bearer ${token}` } });
  expect(res.status).toBe(200);
  const line = gw.logs.findLast((l) => l.msg === 'decision' && l.reqId === res.headers['x-request-id']);
  return line!.input.risk;
}

const riskCheck = async (gw: TestGateway) => ((await rawRequest(gw.adminUrl, '/readyz')).json().checks as { name: string }[]).find((c) => c.name === 'risk-model');

describe('the risk model on reload', () => {
  it('swaps a changed file, refuses a bad one and keeps scoring with the running model', async () => {
    const gw = await start({ model: 'model.onnx' });
    const first = await scored(gw);
    const version = first.model_version as string;
    expect(version).toMatch(/^anomaly-/);
    expect(await riskCheck(gw)).toMatchObject({ ok: true, detail: expect.stringContaining(`model ${version}`) });

    // Metadata for another feature extractor: refused, the reload applies the rest, the old model scores on.
    const meta = JSON.parse(readFileSync(join(dir, 'model.meta.json'), 'utf8'));
    writeFileSync(join(dir, 'model.meta.json'), JSON.stringify({ ...meta, featureSpecHash: 'ffffffffffffffff' }));
    expect(await gw.reload()).toBeUndefined();
    expect(gw.logs.some((l) => l.msg === 'risk model reload refused: the new model does not load; keeping the running one' && l.keeping === version)).toBe(true);
    expect(await riskCheck(gw)).toMatchObject({ ok: true, degraded: true, detail: expect.stringContaining('new model refused') });
    expect((await rawRequest(gw.adminUrl, '/readyz')).status).toBe(200);
    expect((await scored(gw)).model_version).toBe(version);

    // A good new file (another threshold, another version): loaded, swapped, logged with both versions.
    writeFileSync(join(dir, 'model.meta.json'), JSON.stringify({ ...meta, modelVersion: 'anomaly-test-2', thresholds: { ...meta.thresholds, flag: 0.01 } }));
    expect(await gw.reload()).toBeUndefined();
    expect(gw.logs.some((l) => l.msg === 'risk model replaced' && l.modelVersion === 'anomaly-test-2' && l.replacing === version)).toBe(true);
    const after = await scored(gw);
    expect(after).toMatchObject({ model_version: 'anomaly-test-2', flagged: true });
    expect(await riskCheck(gw)).toMatchObject({ ok: true, detail: expect.stringContaining('threshold 0.01') });
    expect(await riskCheck(gw)).not.toHaveProperty('degraded');
  });

  it('degraded: starts without a model, serves unscored requests, says so on /readyz and in the metrics', async () => {
    const gw = await start({ model: 'missing.onnx', onModelError: 'degraded' });
    expect(gw.logs.some((l) => l.level === 50 && String(l.msg).startsWith('RISK MODEL NOT LOADED'))).toBe(true);
    expect(await scored(gw)).toEqual({});
    const ready = await rawRequest(gw.adminUrl, '/readyz');
    expect(ready.status).toBe(200);
    expect(await riskCheck(gw)).toMatchObject({ ok: true, degraded: true, detail: expect.stringContaining('missing.onnx: no such file') });
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/ztgw_risk_model_up 0/);
    expect(metrics).toMatch(/ztgw_risk_unscored_total\{reason="unavailable"\} 1/);
  });
});
