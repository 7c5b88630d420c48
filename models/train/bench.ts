// Microbenchmarks for models/README.md: extractor µs/event, bytes per principal, scored
// requests/s on one core (extractor + batched model), and the batcher's added latency at
// moderate concurrency. Run with --expose-gc for the memory figure:
//   node_modules/.bin/node --expose-gc models/train/bench.ts
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createBatcher } from '../../src/risk/batcher.ts';
import { createFeatureExtractor, FEATURE_COUNT, type TraceEvent } from '../../src/risk/features.ts';
import { loadRiskModel } from '../../src/risk/model.ts';
import { generate } from './generate.ts';

const lines: TraceEvent[] = generate({ seed: 9, days: 1, users: 100, serviceAccounts: 8, episodes: 1, families: ['flood', 'enumeration'] });
const gc = (globalThis as { gc?: () => void }).gc;

// 1. Extractor.
{
  const x = createFeatureExtractor();
  const out = new Float32Array(FEATURE_COUNT);
  for (const l of lines.slice(0, 20_000)) x.observe(l, out), x.observeResponse(l); // warm-up
  const t0 = performance.now();
  for (const l of lines) {
    x.observe(l, out);
    x.observeResponse(l);
  }
  console.log(`extractor: ${(((performance.now() - t0) * 1000) / lines.length).toFixed(2)} µs per line (request + response), ${lines.length} lines`);
}

// 2. Bytes per principal.
if (gc !== undefined) {
  const n = 50_000;
  gc();
  const m0 = process.memoryUsage();
  const x = createFeatureExtractor({ maxPrincipals: n });
  for (let i = 0; i < n; i++) x.observe({ ts: 1.7e12 + i, principal: `user-${i}@corp.example`, device: 'dev-0123456789ab', ip: '203.0.113.9', method: 'GET', path: `/api/v1/customers/${i}` });
  gc();
  const m1 = process.memoryUsage();
  const bytes = (m1.heapUsed - m0.heapUsed + m1.external - m0.external) / n;
  console.log(`memory: ${bytes.toFixed(0)} bytes per principal (${n} principals, key ~26 chars)`);
}

const model = await loadRiskModel({ modelPath: 'models/anomaly.onnx', metaPath: 'models/anomaly.meta.json' });

// 3. Run cost by batch size.
for (const rows of [1, 16, 64, 256]) {
  const batch = new Float32Array(rows * FEATURE_COUNT).fill(0.5);
  for (let i = 0; i < 50; i++) await model.score(batch, rows);
  const runs = 2000;
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) await model.score(batch, rows);
  const us = ((performance.now() - t0) * 1000) / runs;
  console.log(`model run: ${rows} rows ${us.toFixed(1)} µs (${(us / rows).toFixed(2)} µs/row)`);
}

// 4. Scored requests/s through extractor + batcher, `concurrency` requests in flight.
async function load(concurrency: number, total: number): Promise<{ cpuRps: number; rps: number; p50: number; p99: number; meanBatch: number }> {
  const x = createFeatureExtractor();
  const b = createBatcher(model, { maxRows: 64 });
  const lat: number[] = [];
  let i = 0;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  async function worker(): Promise<void> {
    while (i < total) {
      const l = lines[i++ % lines.length]!;
      const start = performance.now();
      const f = x.observe({ ...l, ts: l.ts });
      const s = await b.score(f);
      x.observeResponse(l);
      lat.push(performance.now() - start);
      if (s.score < 0) throw new Error('unreachable');
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSecs = (cpu.user + cpu.system) / 1e6;
  lat.sort((a, c) => a - c);
  await b.close();
  return { cpuRps: total / cpuSecs, rps: total / secs, p50: lat[Math.floor(lat.length * 0.5)]!, p99: lat[Math.floor(lat.length * 0.99)]!, meanBatch: b.stats.rows / b.stats.runs };
}
const h = monitorEventLoopDelay();
h.enable();
for (const c of [1, 8, 32, 64, 256]) {
  const r = await load(c, c <= 8 ? 40_000 : 200_000);
  console.log(`extractor + batcher, ${c} in flight: ${Math.round(r.rps)} scored req/s (${Math.round(r.cpuRps)} per CPU-second), added latency p50 ${(r.p50 * 1000).toFixed(0)} µs p99 ${(r.p99 * 1000).toFixed(0)} µs, mean batch ${r.meanBatch.toFixed(1)} rows`);
}
await model.close();
