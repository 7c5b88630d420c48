// Detection figures for labelled traces, shared by `ztgw model eval` and models/train/evaluate.ts:
// ROC-AUC and TPR at fixed false-positive rates per attack family (thresholds from the benign
// lines of the same traces), beside a per-principal request-rate z-score baseline, so a model
// can be judged on traffic it was not trained on and against the obvious alternative.
import { eventOrder } from './trace.ts';

/** ROC-AUC by ranks (Mann-Whitney U), ties counted half. */
export function rocAuc(negatives: ArrayLike<number>, positives: ArrayLike<number>): number {
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
 * variance (EWMA over requests, alpha 0.01), computed before the request updates them; in
 * event-time order, returned in input order.
 */
export function rateZ(lines: readonly { ts: number; principal: string }[]): Float64Array {
  const z = new Float64Array(lines.length);
  const st = new Map<string, { last: number; c: number; m: number; v: number }>();
  for (const i of eventOrder(lines)) {
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

export interface Evaluation {
  benignLines: number;
  /** Share of benign lines over the flag threshold. */
  fprAtFlag: number;
  /** By family, in order of first appearance. */
  families: Record<string, FamilyFigures>;
}

/** One scored line: model score, baseline score, label ("benign" or a family). */
export interface Scored {
  readonly score: number;
  readonly baseline: number;
  readonly label: string;
}

export function evaluate(scored: readonly Scored[], flag: number): Evaluation {
  const benign = scored.filter((s) => s.label === 'benign');
  const benignScores = benign.map((s) => s.score);
  const benignBase = benign.map((s) => s.baseline);
  const t1 = thresholdAt(benignScores, 0.01);
  const t01 = thresholdAt(benignScores, 0.001);
  const b1 = thresholdAt(benignBase, 0.01);
  const b01 = thresholdAt(benignBase, 0.001);
  const share = (xs: readonly number[], t: number): number => xs.filter((x) => x > t).length / Math.max(1, xs.length);
  const byFamily = new Map<string, Scored[]>();
  for (const s of scored) {
    if (s.label === 'benign') continue;
    let list = byFamily.get(s.label);
    if (list === undefined) byFamily.set(s.label, (list = []));
    list.push(s);
  }
  const families: Record<string, FamilyFigures> = {};
  for (const [family, list] of byFamily) {
    const s = list.map((x) => x.score);
    const b = list.map((x) => x.baseline);
    families[family] = {
      lines: list.length,
      auc: rocAuc(benignScores, s),
      tpr1: share(s, t1),
      tpr01: share(s, t01),
      tprAtFlag: share(s, flag),
      baselineAuc: rocAuc(benignBase, b),
      baselineTpr1: share(b, b1),
      baselineTpr01: share(b, b01),
    };
  }
  return { benignLines: benign.length, fprAtFlag: share(benignScores, flag), families };
}

/** The figures as a Markdown table (models/README.md and `ztgw model eval` print the same one). */
export function formatFigures(families: Readonly<Record<string, FamilyFigures>>): string {
  const fmt = (x: number): string => (Number.isNaN(x) ? 'n/a' : x.toFixed(3));
  const rows = Object.entries(families).map(
    ([fam, f]) => `| ${fam} | ${f.lines} | ${fmt(f.auc)} | ${fmt(f.tpr1)} | ${fmt(f.tpr01)} | ${fmt(f.tprAtFlag)} | ${fmt(f.baselineAuc)} | ${fmt(f.baselineTpr1)} | ${fmt(f.baselineTpr01)} |`,
  );
  return [
    '| family | attack lines | ROC-AUC | TPR @1% FPR | TPR @0.1% FPR | TPR @flag | baseline ROC-AUC | baseline TPR @1% | baseline TPR @0.1% |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
}
