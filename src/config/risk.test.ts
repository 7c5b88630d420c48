import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../core/diagnostics.ts';
import { createMetrics } from '../observability/metrics.ts';
import { createFeatureExtractor, FEATURE_COUNT } from '../risk/features.ts';
import { compileRisk, type RuntimeRisk } from './risk.ts';
import type { Config } from './schema.ts';

const MODELS = resolve(import.meta.dirname, '../../models');
const dir = mkdtempSync(join(tmpdir(), 'ztgw-risk-config-'));
copyFileSync(join(MODELS, 'anomaly.onnx'), join(dir, 'anomaly.onnx'));
copyFileSync(join(MODELS, 'anomaly.meta.json'), join(dir, 'anomaly.meta.json'));
const open: RuntimeRisk[] = [];
afterAll(async () => {
  for (const r of new Set(open.map((o) => o.loaded).filter((l) => l !== undefined))) await r.close();
  rmSync(dir, { recursive: true, force: true });
});

function lines() {
  const out: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void out.push(JSON.parse(s)) });
  return { out, logger };
}

const config = (risk: Partial<NonNullable<Config['risk']>>): Config =>
  ({ risk: { enabled: true, model: 'anomaly.onnx', onModelError: 'fail', maxPrincipals: 100, maxBatch: 64, ...risk } }) as Config;

async function compile(risk: Partial<NonNullable<Config['risk']>>, previous?: RuntimeRisk, metrics = createMetrics()) {
  const log = lines();
  const r = await compileRisk(config(risk), { configDir: dir, extractor: createFeatureExtractor(), previous, logger: log.logger, metrics });
  if (r !== undefined) open.push(r);
  return { risk: r, log: log.out, metrics };
}

describe('compileRisk', () => {
  it('loads the model relative to the config dir, metadata beside it, threshold from the metadata unless overridden', async () => {
    const { risk, log, metrics } = await compile({});
    expect(risk!.loaded!.model.version).toMatch(/^anomaly-/);
    expect(risk!.threshold).toBe(JSON.parse(readFileSync(join(dir, 'anomaly.meta.json'), 'utf8')).thresholds.flag);
    expect(risk!.error).toBeUndefined();
    expect(log.some((l) => l.msg === 'risk model loaded' && l.modelVersion === risk!.loaded!.model.version)).toBe(true);
    expect((await metrics.registry.getSingleMetricAsString('ztgw_risk_model_up'))).toMatch(/ztgw_risk_model_up 1/);
    const scored = await risk!.loaded!.batcher.score(new Float32Array(FEATURE_COUNT));
    expect(scored.score).toBeGreaterThanOrEqual(0);
    const over = await compile({ threshold: 0.8 }, risk);
    expect(over.risk!.threshold).toBe(0.8);
    expect(over.risk!.loaded).toBe(risk!.loaded); // same file, same model object
  });

  it('a missing model fails the start under onModelError: fail, with the path and a clear reason', async () => {
    const err = await compile({ model: 'nope.onnx' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain(join(dir, 'nope.onnx'));
    expect((err as Error).message).toContain('risk.model');
    expect((err as Error).message).toContain('no such file');
  });

  it('degraded: starts without a model, logged at error, metric 0, the reason kept for /readyz', async () => {
    writeFileSync(join(dir, 'bad.onnx'), 'not onnx');
    copyFileSync(join(dir, 'anomaly.meta.json'), join(dir, 'bad.meta.json'));
    const { risk, log, metrics } = await compile({ model: 'bad.onnx', onModelError: 'degraded' });
    expect(risk!.loaded).toBeUndefined();
    expect(risk!.error).toMatch(/degraded, no model: .*bad\.onnx: not a loadable ONNX model/);
    expect(log.some((l) => l.level === 50 && String(l.msg).startsWith('RISK MODEL NOT LOADED'))).toBe(true);
    expect(await metrics.registry.getSingleMetricAsString('ztgw_risk_model_up')).toMatch(/ztgw_risk_model_up 0/);
  });

  it('a changed file swaps the model; a bad new one keeps the running model and says so', async () => {
    copyFileSync(join(dir, 'anomaly.onnx'), join(dir, 'swap.onnx'));
    copyFileSync(join(dir, 'anomaly.meta.json'), join(dir, 'swap.meta.json'));
    const first = (await compile({ model: 'swap.onnx' })).risk!;
    // A metadata-only change (new threshold) is new content: loaded again and swapped.
    const meta = JSON.parse(readFileSync(join(dir, 'swap.meta.json'), 'utf8'));
    writeFileSync(join(dir, 'swap.meta.json'), JSON.stringify({ ...meta, thresholds: { ...meta.thresholds, flag: 0.77 } }));
    const second = await compile({ model: 'swap.onnx' }, first);
    expect(second.risk!.loaded).not.toBe(first.loaded);
    expect(second.risk!.threshold).toBe(0.77);
    expect(second.log.some((l) => l.msg === 'risk model replaced')).toBe(true);
    // Metadata for another feature extractor: refused, the running model stays.
    writeFileSync(join(dir, 'swap.meta.json'), JSON.stringify({ ...meta, featureSpecHash: 'ffffffffffffffff' }));
    const third = await compile({ model: 'swap.onnx' }, second.risk);
    expect(third.risk!.loaded).toBe(second.risk!.loaded);
    expect(third.risk!.error).toMatch(/new model refused \(keeping anomaly-.*\): .*feature spec ffffffffffffffff/);
    expect(third.log.some((l) => l.level === 50 && l.msg === 'risk model reload refused: the new model does not load; keeping the running one')).toBe(true);
    expect(await third.metrics.registry.getSingleMetricAsString('ztgw_risk_model_loads_total')).toMatch(/result="failed"} 1/);
  });

  it('no section or enabled: false: no risk part', async () => {
    expect((await compile({ enabled: false })).risk).toBeUndefined();
  });
});
