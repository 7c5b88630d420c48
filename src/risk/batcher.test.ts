import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createBatcher } from './batcher.ts';
import { FEATURE_COUNT } from './features.ts';
import { loadRiskModel, RiskModelError, type ScoreResult } from './model.ts';

/** A fake model: score = first feature of the row; records the batch sizes it ran. */
function fakeModel(fail = false) {
  const runs: number[] = [];
  return {
    runs,
    async score(batch: Float32Array, rows: number): Promise<ScoreResult> {
      runs.push(rows);
      await new Promise((r) => setImmediate(r));
      if (fail) throw new Error('boom');
      const scores = new Float32Array(rows);
      const contributions = new Float32Array(rows * FEATURE_COUNT);
      for (let r = 0; r < rows; r++) {
        scores[r] = batch[r * FEATURE_COUNT]!;
        contributions[r * FEATURE_COUNT + (r % FEATURE_COUNT)] = 1;
      }
      return { scores, contributions };
    },
  };
}

function row(v: number): Float32Array {
  const f = new Float32Array(FEATURE_COUNT);
  f[0] = v;
  return f;
}

describe('createBatcher', () => {
  it('gathers concurrent requests into one run and answers each with its own row', async () => {
    const m = fakeModel();
    const b = createBatcher(m);
    const results = await Promise.all([0.1, 0.2, 0.3, 0.4].map((v) => b.score(row(v))));
    expect(results.map((r) => r.score)).toEqual([0.1, 0.2, 0.3, 0.4].map(Math.fround));
    expect(results[2]!.top[0]).toBe(2);
    expect(m.runs).toEqual([4]);
    await b.close();
  });

  it('copies the row at once (the caller may reuse its buffer)', async () => {
    const b = createBatcher(fakeModel());
    const buf = row(0.5);
    const p = b.score(buf);
    buf[0] = 0.9;
    expect((await p).score).toBe(Math.fround(0.5));
    await b.close();
  });

  it('runs a full batch at once, and the rest as the next run', async () => {
    const m = fakeModel();
    const b = createBatcher(m, { maxRows: 3 });
    await Promise.all([1, 2, 3, 4, 5, 6, 7].map((v) => b.score(row(v))));
    expect(m.runs).toEqual([3, 3, 1]);
    expect(b.stats).toEqual({ runs: 3, rows: 7 });
    await b.close();
  });

  it('rejects every request of a failed run with RiskModelError, and keeps serving', async () => {
    const b = createBatcher(fakeModel(true));
    const errs = await Promise.all([b.score(row(1)), b.score(row(2))].map((p) => p.then(() => undefined, (e: unknown) => e)));
    for (const e of errs) expect(e).toBeInstanceOf(RiskModelError);
    expect((errs[0] as RiskModelError).reason).toBe('inference');
    await b.close();
    await expect(b.score(row(1))).rejects.toBeInstanceOf(RiskModelError);
  });

  it('scores with the shipped model exactly as a direct run does', async () => {
    const model = await loadRiskModel({
      modelPath: resolve(import.meta.dirname, '../../models/anomaly.onnx'),
      metaPath: resolve(import.meta.dirname, '../../models/anomaly.meta.json'),
    });
    try {
      const rows = 10;
      const data = new Float32Array(rows * FEATURE_COUNT);
      for (let i = 0; i < data.length; i++) data[i] = ((i * 7919) % 101) / 50 - 1;
      const direct = await model.score(data, rows);
      const b = createBatcher(model, { maxRows: 4 });
      const batched = await Promise.all(Array.from({ length: rows }, (_, r) => b.score(data, r * FEATURE_COUNT)));
      expect(batched.map((s) => s.score)).toEqual(Array.from(direct.scores));
      await b.close();
    } finally {
      await model.close();
    }
  });
});
