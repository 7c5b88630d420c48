// The risk stage's in-process figures (issue 15), run by `npm run bench` in a child process
// with --expose-gc, nothing else running: bytes per principal of the feature extractor,
// its cost per request, one model run by batch size, and scored requests/s through the
// extractor and the micro-batcher with N requests in flight (the gateway's path without
// HTTP), with the latency the batching adds. Prints one JSON line on stdout.
//
//   node_modules/.bin/node --expose-gc test/bench/risk-micro.ts
import { resolve } from 'node:path';
import { createBatcher } from '../../src/risk/batcher.ts';
import { createFeatureExtractor, FEATURE_COUNT, type TraceEvent } from '../../src/risk/features.ts';
import { loadRiskModel } from '../../src/risk/model.ts';
import { generate } from '../../models/train/generate.ts';

const ROOT = resolve(import.meta.dirname, '../..');
/** Batch cap, as the gateway's default `risk.maxBatch`. */
const MAX_BATCH = 64;

export interface RiskMicroResult {
  readonly extractorUsPerLine: number;
  readonly bytesPerPrincipal: number | undefined;
  readonly runUs: Record<number, number>;
  readonly load: { inFlight: number; scoredPerS: number; scoredPerCpuS: number; p50Us: number; p99Us: number; meanBatch: number }[];
}

export async function measureRisk(): Promise<RiskMicroResult> {
  const lines: TraceEvent[] = generate({ seed: 9, days: 1, users: 100, serviceAccounts: 8, episodes: 1, families: ['flood', 'enumeration'] });
  const gc = (globalThis as { gc?: () => void }).gc;

  const x = createFeatureExtractor();
  const out = new Float32Array(FEATURE_COUNT);
  for (const l of lines.slice(0, 20_000)) x.observe(l, out), x.observeResponse(l); // warm-up
  let t0 = performance.now();
  for (const l of lines) x.observe(l, out), x.observeResponse(l);
  const extractorUsPerLine = ((performance.now() - t0) * 1000) / lines.length;

  let bytesPerPrincipal: number | undefined;
  if (gc !== undefined) {
    const n = 50_000;
    gc();
    const m0 = process.memoryUsage();
    const many = createFeatureExtractor({ maxPrincipals: n });
    for (let i = 0; i < n; i++) many.observe({ ts: 1.7e12 + i, principal: `user-${i}@corp.example`, device: 'dev-0123456789ab', ip: '203.0.113.9', method: 'GET', path: `/api/v1/customers/${i}` });
    gc();
    const m1 = process.memoryUsage();
    bytesPerPrincipal = (m1.heapUsed - m0.heapUsed + m1.arrayBuffers - m0.arrayBuffers) / n;
    if (many.size !== n) throw new Error(`extractor holds ${many.size} principals, not ${n}`);
  }

  const model = await loadRiskModel({ modelPath: resolve(ROOT, 'models/anomaly.onnx'), metaPath: resolve(ROOT, 'models/anomaly.meta.json') });
  const runUs: Record<number, number> = {};
  for (const rows of [1, 16, 64, 256]) {
    const batch = new Float32Array(rows * FEATURE_COUNT).fill(0.5);
    for (let i = 0; i < 50; i++) await model.score(batch, rows);
    const runs = 1000;
    t0 = performance.now();
    for (let i = 0; i < runs; i++) await model.score(batch, rows);
    runUs[rows] = ((performance.now() - t0) * 1000) / runs;
  }

  // Scored requests through extractor + batcher with `inFlight` requests outstanding.
  const load: RiskMicroResult['load'] = [];
  for (const inFlight of [1, 8, 32, 64]) {
    const total = inFlight <= 8 ? 40_000 : 150_000;
    const ex = createFeatureExtractor();
    const batcher = createBatcher(model, { maxRows: MAX_BATCH });
    const lat: number[] = [];
    let i = 0;
    const start = performance.now();
    const cpu0 = process.cpuUsage();
    const worker = async (): Promise<void> => {
      while (i < total) {
        const l = lines[i++ % lines.length]!;
        const began = performance.now();
        const scored = await batcher.score(ex.observe(l));
        ex.observeResponse(l);
        lat.push(performance.now() - began);
        if (!(scored.score >= 0 && scored.score <= 1)) throw new Error(`score ${scored.score} out of [0, 1]`);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    const secs = (performance.now() - start) / 1000;
    const cpu = process.cpuUsage(cpu0);
    lat.sort((a, b) => a - b);
    await batcher.close();
    load.push({
      inFlight,
      scoredPerS: total / secs,
      scoredPerCpuS: total / ((cpu.user + cpu.system) / 1e6),
      p50Us: lat[Math.floor(lat.length * 0.5)]! * 1000,
      p99Us: lat[Math.floor(lat.length * 0.99)]! * 1000,
      meanBatch: batcher.stats.rows / batcher.stats.runs,
    });
  }
  await model.close();
  return { extractorUsPerLine, bytesPerPrincipal, runUs, load };
}

export function formatRisk(r: RiskMicroResult): string {
  const rows = r.load.map(
    (l) =>
      `  ${String(l.inFlight).padStart(3)} in flight: ${l.scoredPerS.toFixed(0).padStart(7)} scored req/s, ${l.scoredPerCpuS.toFixed(0).padStart(7)} per CPU-second` +
      ` (target ≥ 50000 on one core); added p50 ${l.p50Us.toFixed(0)} µs, p99 ${l.p99Us.toFixed(0)} µs; mean batch ${l.meanBatch.toFixed(1)} rows`,
  );
  return (
    `risk stage, in process (feature extractor + micro-batched ONNX model, one intra-op thread):\n` +
    `  memory: ${r.bytesPerPrincipal?.toFixed(0) ?? '– (run with --expose-gc)'} bytes per principal (state, LRU entry and key; 50,000 principals)\n` +
    `  extractor: ${r.extractorUsPerLine.toFixed(2)} µs per request + response\n` +
    `  one model run: ${Object.entries(r.runUs).map(([rows, us]) => `${rows} rows ${us.toFixed(0)} µs`).join(', ')}\n` +
    rows.join('\n') +
    '\n'
  );
}

if (import.meta.main) process.stdout.write(JSON.stringify(await measureRisk()) + '\n');
