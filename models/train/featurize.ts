// Runs a labelled trace through the gateway's own feature extractor (src/risk/features.ts),
// in event-time order and in the documented order of operations (replayLine: request, then
// the row is taken, then the response), and writes the matrix for training:
//
//   node_modules/.bin/node models/train/featurize.ts --traces T.jsonl --out DIR
//     DIR/X.npy      float32 [N, F] features, in input line order
//     DIR/y.npy      int8    [N]    0 benign, 1 + index in FAMILIES, -1 a victim's benign line during/after an episode
//     DIR/hour.npy   float32 [N]    hours since the trace's first line (for warm-up filtering)
//     DIR/meta.json  feature names, spec hash, families
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createFeatureExtractor, FEATURE_COUNT, FEATURE_GROUPS, FEATURE_NAMES, FEATURE_SPEC_HASH, NOT_SUSPICIOUS_WHEN_HIGH, replayLine, type TraceEvent } from '../../src/risk/features.ts';
import { FAMILIES } from './generate.ts';
import { eventOrder } from '../../src/risk/trace.ts';

export interface Featurized {
  readonly n: number;
  /** Row-major [n, FEATURE_COUNT]. */
  readonly X: Float32Array;
  readonly y: Int8Array;
  readonly hours: Float32Array;
  readonly lines: readonly TraceEvent[];
}

/** Reads a JSONL trace (extra fields kept on the objects, ignored by the extractor). */
export async function readTrace(file: string): Promise<(TraceEvent & { label?: string; context?: string })[]> {
  const out: (TraceEvent & { label?: string; context?: string })[] = [];
  const rl = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
  for await (const line of rl) if (line.trim() !== '') out.push(JSON.parse(line));
  return out;
}

export { eventOrder };

export function featurize(lines: readonly (TraceEvent & { label?: string; context?: string })[]): Featurized {
  const n = lines.length;
  const X = new Float32Array(n * FEATURE_COUNT);
  const y = new Int8Array(n);
  const hours = new Float32Array(n);
  const extractor = createFeatureExtractor({ maxPrincipals: 100_000 });
  const t0 = n === 0 ? 0 : Math.min(...lines.slice(0, 1000).map((l) => l.ts));
  for (const i of eventOrder(lines)) {
    const line = lines[i]!;
    replayLine(extractor, line, (row) => X.set(row, i * FEATURE_COUNT));
    const family = line.label === undefined || line.label === 'benign' ? -1 : FAMILIES.indexOf(line.label as never);
    y[i] = line.context === 'after-attack' ? -1 : family === -1 ? 0 : family + 1;
    hours[i] = (line.ts - t0) / 3_600_000;
  }
  return { n, X, y, hours, lines };
}

/** A minimal .npy (format 1.0) writer: numpy.load reads it without pickle. */
export function npy(data: Float32Array | Int8Array, shape: readonly number[]): Buffer {
  const descr = data instanceof Float32Array ? '<f4' : '|i1';
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { traces: { type: 'string' }, out: { type: 'string' } } });
  if (values.traces === undefined || values.out === undefined) throw new Error('usage: featurize.ts --traces T.jsonl --out DIR');
  const lines = await readTrace(values.traces);
  const started = performance.now();
  const f = featurize(lines);
  const ms = performance.now() - started;
  await mkdir(values.out, { recursive: true });
  await writeFile(join(values.out, 'X.npy'), npy(f.X, [f.n, FEATURE_COUNT]));
  await writeFile(join(values.out, 'y.npy'), npy(f.y, [f.n]));
  await writeFile(join(values.out, 'hour.npy'), npy(f.hours, [f.n]));
  await writeFile(join(values.out, 'meta.json'), JSON.stringify({ features: FEATURE_NAMES, groups: FEATURE_GROUPS, notSuspiciousWhenHigh: NOT_SUSPICIOUS_WHEN_HIGH, featureSpecHash: FEATURE_SPEC_HASH, families: FAMILIES, traces: values.traces }, null, 2));
  console.log(JSON.stringify({ rows: f.n, featurizeMs: Math.round(ms), usPerLine: +((ms * 1000) / Math.max(1, f.n)).toFixed(2) }));
}
