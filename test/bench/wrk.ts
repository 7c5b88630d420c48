// A load run with wrk (C, from the OS's packages: `apt-get install wrk`), for
// `npm run bench -- --generator wrk`. It takes 9-18 µs of CPU per request here (25-54 for
// the DPoP route's large, all-different requests) where autocannon takes 26-56, on the 2
// cores the servers share with it. Measured, not assumed: that freed CPU lifted the bare
// proxy more than the gateways (its CPU per request falls as its rate rises: 79 µs at 13k
// req/s, 103 at 10k), so every gateway's ratio read lower with wrk (jwt 0.74-0.91, DPoP
// 0.42-0.49 in three full runs) than with autocannon (jwt 0.94-1.17, DPoP 0.49-0.58); the
// bench keeps autocannon, its generator since the start, as the default and this as a
// second view (README, Performance). Requests are built once per run in wrk-load.lua; the
// test suite does not run wrk.
import { execFileSync, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { clockTicksPerSecond, type LoadOptions, type LoadResult } from './lib.ts';

const SCRIPT = join(import.meta.dirname, 'wrk-load.lua');
/** One thread drives 50 connections at 50k req/s here; a second would only take CPU from the servers. */
const THREADS = 1;
const TIMEOUT_S = 5;
const RESULT_PREFIX = 'WRK-RESULT ';
const CPU_PREFIX = 'WRK-CPU-TICKS ';

interface WrkResult {
  requests: number;
  durationUs: number;
  status4xx5xx: number;
  socketErrors: number;
  timeouts: number;
  p50Us: number;
  p99Us: number;
  overruns: number;
}

/**
 * One wrk run; `poolFile` is where a header pool is written for wrk-load.lua (a scratch
 * path, overwritten each run). It stops by itself after `durationS`; should it not, a
 * watchdog kills its process group and the run fails.
 */
export async function runWrk(opts: LoadOptions & { readonly poolFile: string }): Promise<LoadResult> {
  const scriptArgs = [String(THREADS)];
  if (opts.headerPool !== undefined) {
    await writeFile(opts.poolFile, opts.headerPool.sets.map(poolLine).join(''));
    scriptArgs.push(opts.poolFile);
  }
  const headerArgs = Object.entries(opts.headers).flatMap(([name, value]) => ['-H', `${name}: ${value}`]);
  const wrkArgs = ['-t', String(THREADS), '-c', String(opts.connections), '-d', `${opts.durationS}s`, '--timeout', `${TIMEOUT_S}s`, '-s', SCRIPT, ...headerArgs, opts.url, '--', ...scriptArgs];
  // The shell reports the CPU wrk used (its children's utime and stime, proc(5) fields 16
  // and 17) once wrk has exited: exact, unlike sampling /proc/<wrk>/stat while it runs.
  const shell = `wrk "$@"; code=$?; echo "${CPU_PREFIX}$(cut -d' ' -f16,17 /proc/$$/stat)"; exit $code`;
  const stdout = await runBounded('sh', ['-c', shell, 'sh', ...wrkArgs], (opts.durationS + 15) * 1000);

  const resultLine = stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  const cpuLine = stdout.split('\n').find((l) => l.startsWith(CPU_PREFIX));
  if (resultLine === undefined || cpuLine === undefined) throw new Error(`wrk against ${opts.url} printed no result:\n${stdout.slice(-2000)}`);
  const r = JSON.parse(resultLine.slice(RESULT_PREFIX.length)) as WrkResult;
  const ticks = cpuLine.slice(CPU_PREFIX.length).trim().split(' ').map(Number);
  const generatorCpuMicros = ((ticks[0]! + ticks[1]!) / clockTicksPerSecond()) * 1e6;
  // wrk counts a response with status ≥ 400 as an error and anything below as fine: none
  // of the targets redirects, so this is "not 2xx" for them.
  return {
    reqPerSec: r.requests / (r.durationUs / 1e6),
    p50Ms: r.p50Us / 1000,
    p99Ms: r.p99Us / 1000,
    responses: r.requests,
    ok2xx: r.requests - r.status4xx5xx,
    non2xx: r.status4xx5xx,
    errors: r.socketErrors + r.timeouts,
    statusCodes: r.status4xx5xx === 0 ? {} : { '4xx/5xx': r.status4xx5xx },
    overrun: r.overruns,
    generatorCpuMicros,
  };
}

/** A header set as wrk-load.lua reads it: `name<TAB>value…`, one line. */
function poolLine(set: Record<string, string>): string {
  const fields = Object.entries(set).flat();
  if (fields.some((f) => /[\t\n\r]/.test(f))) throw new Error('a pooled header holds a tab or a line break');
  return `${fields.join('\t')}\n`;
}

/** Runs a command in its own process group; resolves with its stdout if it exits 0 within `timeoutMs`, else kills the group and rejects. */
function runBounded(command: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-4000)));
    const watchdog = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(new Error(`${command} did not stop within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(watchdog);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(watchdog);
      if (code === 0) resolve(stdout);
      else reject(new Error(`wrk exited ${code}: ${stderr.trim() || stdout.slice(-2000)}`));
    });
  });
}

/** Whether a `wrk` binary is on PATH. */
export function wrkOnPath(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v wrk'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
