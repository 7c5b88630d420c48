// The whole rebuild of models/anomaly.onnx + anomaly.meta.json, reproducible from fixed seeds:
//   node models/train/pipeline.ts [--work DIR]      (npm run model:train)
// Needs /usr/bin/python3 with Debian's python3-numpy and python3-torch; everything else is
// this repository. Seeds: 1 train, 2 validation, 3 to 6 held out (other populations, other
// attack episodes). ~2 minutes of CPU on the 2-core reference box.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const root = resolve(import.meta.dirname, '../..');
const { values } = parseArgs({ options: { work: { type: 'string', default: '/tmp/ztgw-model' } } });
const work = resolve(values.work);
mkdirSync(work, { recursive: true });
const node = process.execPath;
const run = (cmd: string, args: string[]): void => {
  console.log(`$ ${[cmd, ...args].join(' ')}`);
  execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });
};

const sets = [
  { name: 'train', seed: 1, days: 5 },
  { name: 'val', seed: 2, days: 4 },
  { name: 'test3', seed: 3, days: 4 },
  { name: 'test4', seed: 4, days: 4 },
  { name: 'test5', seed: 5, days: 4 },
  { name: 'test6', seed: 6, days: 4 },
];
for (const s of sets) {
  run(node, ['models/train/generate.ts', '--seed', String(s.seed), '--days', String(s.days), '--episodes', s.name.startsWith('test') ? '4' : '3', '--out', join(work, `${s.name}.jsonl`)]);
}
for (const s of sets.slice(0, 2)) run(node, ['models/train/featurize.ts', '--traces', join(work, `${s.name}.jsonl`), '--out', join(work, s.name)]);
run('/usr/bin/python3', ['models/train/train.py', '--train', join(work, 'train'), '--val', join(work, 'val'), '--out', 'models/anomaly.onnx', '--meta-out', join(work, 'partial.json')]);
run(node, [
  'models/train/evaluate.ts',
  '--model', 'models/anomaly.onnx',
  '--meta', 'models/anomaly.meta.json',
  '--partial', join(work, 'partial.json'),
  '--write-meta',
  '--traces', sets.filter((s) => s.name.startsWith('test')).map((s) => join(work, `${s.name}.jsonl`)).join(','),
  '--training-description',
  'synthetic traces from models/train/generate.ts: seed 1 (5 days, 150 employees, 12 service accounts) for fitting, benign lines only; seed 2 (4 days) to calibrate the score and thresholds on its benign lines after a 2-day warm-up',
]);
