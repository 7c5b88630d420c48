import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createFeatureExtractor, FEATURE_COUNT, FEATURE_NAMES, FEATURE_SPEC_HASH } from './features.ts';
import { loadRiskModel, parseMeta, RiskModelError, topFeatureIndexes, topFeatureNames } from './model.ts';

const MODEL = resolve(import.meta.dirname, '../../models/anomaly.onnx');
const META = resolve(import.meta.dirname, '../../models/anomaly.meta.json');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'risk-model-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<RiskModelError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(RiskModelError);
  return err as RiskModelError;
}

describe('loadRiskModel', () => {
  it('loads the shipped model, whose metadata matches this extractor', async () => {
    const model = await loadRiskModel({ modelPath: MODEL, metaPath: META });
    try {
      expect(model.meta.featureSpecHash).toBe(FEATURE_SPEC_HASH);
      expect(model.version).toMatch(/^anomaly-/);
      const x = createFeatureExtractor();
      const batch = new Float32Array(FEATURE_COUNT * 2);
      const t = Date.UTC(2025, 0, 6, 9);
      x.observe({ ts: t, principal: 'a', device: 'd', ip: '10.0.0.1', method: 'GET', path: '/api/v1/me' }, batch, 0);
      for (let i = 1; i <= 300; i++) x.observe({ ts: t + i * 20, principal: 'a', device: 'd', ip: '10.0.0.1', method: 'GET', path: `/api/v1/customers/${i}` }, batch, FEATURE_COUNT);
      const { scores, contributions } = await model.score(batch, 2);
      expect(scores).toHaveLength(2);
      for (const s of scores) expect(s >= 0 && s <= 1).toBe(true);
      // 300 sequential ids in 6 s: far above the flag threshold, and it says why.
      expect(scores[1]!).toBeGreaterThan(model.meta.thresholds.flag);
      expect(scores[1]!).toBeGreaterThan(scores[0]!);
      const top = topFeatureNames(contributions, 1, 3);
      expect(top).toHaveLength(3);
      expect(top.some((n) => n.startsWith('rate') || n.startsWith('seq') || n === 'burstiness' || n === 'ia_log_mean')).toBe(true);
    } finally {
      await model.close();
    }
  });

  it('refuses a missing model or metadata file', async () => {
    expect((await rejection(loadRiskModel({ modelPath: join(dir, 'none.onnx'), metaPath: META }))).reason).toBe('missing');
    expect((await rejection(loadRiskModel({ modelPath: MODEL, metaPath: join(dir, 'none.json') }))).reason).toBe('missing');
  });

  it('refuses a corrupt model', async () => {
    const bad = join(dir, 'bad.onnx');
    await writeFile(bad, Buffer.from('not an onnx graph at all'));
    const err = await rejection(loadRiskModel({ modelPath: bad, metaPath: META }));
    expect(err.reason).toBe('corrupt');
    expect(err.code).toBe('ERR_RISK_MODEL');
  });

  it('refuses metadata of another feature spec, or with names out of order', async () => {
    const meta = JSON.parse(await readFile(META, 'utf8'));
    const other = join(dir, 'other.json');
    await writeFile(other, JSON.stringify({ ...meta, featureSpecHash: '0000000000000000' }));
    const err = await rejection(loadRiskModel({ modelPath: MODEL, metaPath: other }));
    expect(err.reason).toBe('spec-mismatch');
    expect(err.message).toContain(FEATURE_SPEC_HASH);
    const swapped = [...FEATURE_NAMES];
    [swapped[0], swapped[1]] = [swapped[1]!, swapped[0]!];
    expect(() => parseMeta(JSON.stringify({ ...meta, features: swapped }))).toThrow(/order/);
  });

  it('refuses metadata that is not JSON or lacks a flag threshold', () => {
    expect(() => parseMeta('{')).toThrow(RiskModelError);
    const err = (() => {
      try {
        parseMeta(JSON.stringify({ modelVersion: 'x', featureSpecHash: FEATURE_SPEC_HASH, features: FEATURE_NAMES, thresholds: {} }));
      } catch (e) {
        return e as RiskModelError;
      }
    })();
    expect(err?.reason).toBe('metadata');
  });
});

describe('topFeatureIndexes', () => {
  it('returns the k largest, largest first', () => {
    const c = new Float32Array(FEATURE_COUNT * 2);
    c[FEATURE_COUNT + 5] = 0.5;
    c[FEATURE_COUNT + 2] = 0.3;
    c[FEATURE_COUNT + 9] = 0.1;
    c[FEATURE_COUNT + 7] = 0.05;
    expect(topFeatureIndexes(c, 1, 3)).toEqual([5, 2, 9]);
  });
});
