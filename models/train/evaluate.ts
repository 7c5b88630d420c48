// Scores held-out labelled traces with the shipped model through the gateway's own code
// (src/risk/features.ts → src/risk/model.ts), and reports per family: ROC-AUC and TPR at 1 %
// and 0.1 % FPR (thresholds from the benign lines of the same traces), TPR at the shipped flag
// threshold, side by side with a per-principal request-rate z-score baseline. Lines before
// WARMUP_DAYS and a victim's own benign lines during/after an episode (context after-attack)
// are left out (generate.ts says why).
//
//   node_modules/.bin/node models/train/evaluate.ts --model models/anomaly.onnx \
//     --meta models/anomaly.meta.json [--partial P.json --write-meta] --traces A.jsonl,B.jsonl
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { FEATURE_COUNT, FEATURE_SPEC_HASH } from '../../src/risk/features.ts';
import { loadRiskModel, parseMeta, type RiskModel } from '../../src/risk/model.ts';
import { featurize, readTrace } from './featurize.ts';
import { FAMILIES, WARMUP_DAYS } from './generate.ts';

/** ROC-AUC by ranks (Mann-Whitney U), ties counted half. */
export function rocAuc(negatives: Float64Array | number[], positives: Float64Array | number[]): number {
  const all = [...Array.from(negatives, (s) => [s, 0] as const), ...Array.from(positives, (s) => [s, 1] as const)].sort((a, b) => a[0] - b[0]);
  let rankSum = 0;
  for (let i = 0; i < all.length; ) {
    let j = i;
    while (j < all.length && all[j]![0] === all[i]![0]) j++;
    const avg = (i + j + 1) / 2; // mean of ranks i+1..j
    for (let k = i; k < j; k++) if (all[k]![1] === 1) rankSum += avg;
    i = j;
  }
  const p = positives.length;
  const n = negatives.length;
  return (rankSum - (p * (p + 1)) / 2) / (p * n);
}

/** The score above which a share `fpr` of the negatives lies. */
export function thresholdAt(negatives: ArrayLike<number>, fpr: number): number {
  const sorted = Float64Array.from(negatives).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * (1 - fpr)))]!;
}

/**
 * The baseline: z-score of the principal's 1-min request rate against its own running mean and
 * variance (EWMA over requests, alpha 0.01), computed before the request updates them.
 */
function rateZ(lines: readonly { ts: number; principal: string }[], order: Uint32Array): Float64Array {
  const z = new Float64Array(lines.length);
  const st = new Map<string, { last: number; c: number; m: number; v: number }>();
  for (const i of order) {
    const l = lines[i]!;
    let s = st.get(l.principal);
    if (s === undefined) st.set(l.principal, (s = { last: l.ts, c: 0, m: 1, v: 1 }));
    s.c = s.c * Math.exp(-Math.max(0, l.ts - s.last) / 60_000) + 1;
    s.last = Math.max(s.last, l.ts);
    z[i] = (s.c - s.m) / Math.sqrt(s.v + 1e-6);
    const d = s.c - s.m;
    s.m += 0.01 * d;
    s.v = 0.99 * (s.v + 0.01 * d * d);
  }
  return z;
}

async function scoreAll(model: RiskModel, X: Float32Array, n: number): Promise<Float64Array> {
  const out = new Float64Array(n);
  const chunk = 4096;
  for (let r = 0; r < n; r += chunk) {
    const rows = Math.min(chunk, n - r);
    const { scores } = await model.score(X.subarray(r * FEATURE_COUNT, (r + rows) * FEATURE_COUNT), rows);
    out.set(scores, r);
  }
  return out;
}

export interface FamilyFigures {
  lines: number;
  auc: number;
  tpr1: number;
  tpr01: number;
  tprAtFlag: number;
  baselineAuc: number;
  baselineTpr1: number;
  baselineTpr01: number;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: 'models/anomaly.onnx' },
      meta: { type: 'string', default: 'models/anomaly.meta.json' },
      partial: { type: 'string' },
      'write-meta': { type: 'boolean', default: false },
      traces: { type: 'string' },
      'training-description': { type: 'string', default: '' },
      'heldout-families': { type: 'string', default: FAMILIES.join(',') },
    },
  });
  if (values.traces === undefined) throw new Error('--traces A.jsonl[,B.jsonl] is required');
  const modelBytes = await readFile(values.model);
  if (values.partial !== undefined) {
    // Complete the trainer's partial metadata so the model can be loaded and checked.
    const partial = JSON.parse(await readFile(values.partial, 'utf8'));
    const digest = createHash('sha256').update(modelBytes).digest('hex').slice(0, 12);
    partial.modelVersion = `anomaly-${FEATURE_SPEC_HASH.slice(0, 6)}-${digest}`;
    await writeFile(values.meta, JSON.stringify(partial, null, 2) + '\n');
  }
  const model = await loadRiskModel({ modelPath: values.model, metaPath: values.meta });
  const flag = model.meta.thresholds.flag;

  const scores: number[] = [];
  const base: number[] = [];
  const labels: number[] = [];
  let usPerLine = 0;
  let total = 0;
  for (const file of values.traces.split(',')) {
    const lines = await readTrace(file);
    const t0 = performance.now();
    const f = featurize(lines);
    usPerLine += performance.now() - t0;
    total += f.n;
    const s = await scoreAll(model, f.X, f.n);
    const order = Uint32Array.from(lines.keys()).sort((a, b) => lines[a]!.ts - lines[b]!.ts || a - b);
    const z = rateZ(lines, order);
    for (let i = 0; i < f.n; i++) {
      if (f.y[i] === -1 || f.hours[i]! < WARMUP_DAYS * 24) continue;
      scores.push(s[i]!);
      base.push(z[i]!);
      labels.push(f.y[i]!);
    }
  }
  await model.close();
  const pick = (xs: number[], k: number): number[] => xs.filter((_, i) => labels[i] === k);
  const benign = pick(scores, 0);
  const benignBase = pick(base, 0);
  const t1 = thresholdAt(benign, 0.01);
  const t01 = thresholdAt(benign, 0.001);
  const b1 = thresholdAt(benignBase, 0.01);
  const b01 = thresholdAt(benignBase, 0.001);
  const share = (xs: number[], t: number): number => xs.filter((x) => x > t).length / Math.max(1, xs.length);
  const families: Record<string, FamilyFigures> = {};
  FAMILIES.forEach((fam, k) => {
    const s = pick(scores, k + 1);
    const b = pick(base, k + 1);
    if (s.length === 0) return;
    families[fam] = {
      lines: s.length,
      auc: rocAuc(benign, s),
      tpr1: share(s, t1),
      tpr01: share(s, t01),
      tprAtFlag: share(s, flag),
      baselineAuc: rocAuc(benignBase, b),
      baselineTpr1: share(b, b1),
      baselineTpr01: share(b, b01),
    };
  });
  const fmt = (x: number): string => x.toFixed(3);
  const rows = Object.entries(families).map(
    ([fam, f]) => `| ${fam} | ${f.lines} | ${fmt(f.auc)} | ${fmt(f.tpr1)} | ${fmt(f.tpr01)} | ${fmt(f.tprAtFlag)} | ${fmt(f.baselineAuc)} | ${fmt(f.baselineTpr1)} | ${fmt(f.baselineTpr01)} |`,
  );
  const table = [
    '| family | attack lines | ROC-AUC | TPR @1% FPR | TPR @0.1% FPR | TPR @flag | baseline ROC-AUC | baseline TPR @1% | baseline TPR @0.1% |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
  const fprAtFlag = share(benign, flag);
  console.log(table);
  console.log(`benign lines ${benign.length}; FPR at the shipped flag threshold ${flag.toFixed(3)}: ${(fprAtFlag * 100).toFixed(2)} %; extractor ${((usPerLine * 1000) / total).toFixed(2)} µs/line`);

  if (values['write-meta']) {
    const meta = parseMeta(await readFile(values.meta, 'utf8'), values.meta) as Record<string, unknown>;
    meta.training = values['training-description'];
    meta.evaluation = {
      traces: values.traces.split(','),
      heldOutFamilies: values['heldout-families'].split(','),
      excluded: `lines in the first ${WARMUP_DAYS} days (warm-up) and victims' own benign lines during/after an episode`,
      benignLines: benign.length,
      fprAtFlag,
      baseline: 'per-principal 1-min request-rate z-score (EWMA mean/variance, alpha 0.01)',
      families,
    };
    await writeFile(values.meta, JSON.stringify(meta, null, 2) + '\n');
    await writeFile(values.meta.replace(/\.meta\.json$/, '.figures.md'), table + '\n');
  }
}
