// Latency at a fixed request rate, below saturation: what a stage adds to one request when
// the gateway is not the bottleneck. At saturation (autocannon's closed loop) any CPU a stage
// costs shows as queueing, so p99 there measures throughput, not the stage. Open loop: requests
// are sent on a schedule whatever the answers do, and each latency counts from its scheduled
// time, so a stall is not hidden by the generator waiting for it (coordinated omission).
// autocannon reports whole milliseconds; this measures microseconds.
import { Pool } from 'undici';

export interface FixedRateResult {
  readonly sent: number;
  readonly ok: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

const TICK_MS = 1;

export async function runFixedRate(opts: {
  url: string;
  headers: Record<string, string>;
  ratePerS: number;
  durationS: number;
  connections: number;
}): Promise<FixedRateResult> {
  const url = new URL(opts.url);
  const pool = new Pool(url.origin, { connections: opts.connections, pipelining: 1 });
  const latencies: number[] = [];
  let ok = 0;
  let sent = 0;
  const pending: Promise<void>[] = [];
  const start = performance.now();
  const end = start + opts.durationS * 1000;
  const send = (scheduledAt: number): void => {
    sent++;
    pending.push(
      pool
        .request({ method: 'GET', path: url.pathname + url.search, headers: opts.headers })
        .then(async (res) => {
          await res.body.dump();
          if (res.statusCode >= 200 && res.statusCode < 300) ok++;
          latencies.push(performance.now() - scheduledAt);
        })
        .catch(() => {}),
    );
  };
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      // Every request due by now, each timed from when it was due.
      const due = Math.min(Math.floor(((Math.min(now, end) - start) / 1000) * opts.ratePerS), Math.floor(opts.durationS * opts.ratePerS));
      while (sent < due) send(start + (sent / opts.ratePerS) * 1000);
      if (now >= end) {
        clearInterval(timer);
        resolve();
      }
    }, TICK_MS);
  });
  await Promise.all(pending);
  await pool.close();
  latencies.sort((a, b) => a - b);
  const at = (q: number): number => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? Number.NaN;
  return { sent, ok, p50Ms: at(0.5), p99Ms: at(0.99) };
}
