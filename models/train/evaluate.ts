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
import { FEATURE_SPEC_HASH } from '../../src/risk/features.ts';
import { evaluate, formatFigures, rateZ, type FamilyFigures, type Scored } from '../../src/risk/evaluation.ts';
import { loadRiskModel, parseMeta } from '../../src/risk/model.ts';
import { scoreRows } from '../../src/risk/trace.ts';
import { featurize, readTrace } from './featurize.ts';
import { FAMILIES, WARMUP_DAYS } from './generate.ts';

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

  const scored: Scored[] = [];
  let usPerLine = 0;
  let total = 0;
  for (const file of values.traces.split(',')) {
    const lines = await readTrace(file);
    const t0 = performance.now();
    const f = featurize(lines);
    usPerLine += performance.now() - t0;
    total += f.n;
    const s = await scoreRows(model, f.X, f.n);
    const z = rateZ(lines);
    for (let i = 0; i < f.n; i++) {
      if (f.y[i] === -1 || f.hours[i]! < WARMUP_DAYS * 24) continue;
      scored.push({ score: s[i]!, baseline: z[i]!, label: f.y[i] === 0 ? 'benign' : FAMILIES[f.y[i]! - 1]! });
    }
  }
  await model.close();
  const result = evaluate(scored, flag);
  // In FAMILIES order, as the committed figures have them.
  const families: Record<string, FamilyFigures> = {};
  for (const fam of FAMILIES) if (result.families[fam] !== undefined) families[fam] = result.families[fam];
  const table = formatFigures(families);
  const fprAtFlag = result.fprAtFlag;
  console.log(table);
  console.log(`benign lines ${result.benignLines}; FPR at the shipped flag threshold ${flag.toFixed(3)}: ${(fprAtFlag * 100).toFixed(2)} %; extractor ${((usPerLine * 1000) / total).toFixed(2)} µs/line`);

  if (values['write-meta']) {
    const meta = parseMeta(await readFile(values.meta, 'utf8'), values.meta) as Record<string, unknown>;
    meta.training = values['training-description'];
    meta.evaluation = {
      traces: values.traces.split(','),
      heldOutFamilies: values['heldout-families'].split(','),
      excluded: `lines in the first ${WARMUP_DAYS} days (warm-up) and victims' own benign lines during/after an episode`,
      benignLines: result.benignLines,
      fprAtFlag,
      baseline: 'per-principal 1-min request-rate z-score (EWMA mean/variance, alpha 0.01)',
      families,
    };
    await writeFile(values.meta, JSON.stringify(meta, null, 2) + '\n');
    await writeFile(values.meta.replace(/\.meta\.json$/, '.figures.md'), table + '\n');
  }
}
