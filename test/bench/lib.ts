// Shared parts of the benchmark harness: child processes that announce readiness with a
// JSON line and are always killed by PID, CPU time from /proc, a bounded autocannon run
// (wrk.ts has the wrk one), and medians. Nothing here knows about the gateway; targets
// (targets.ts) and the runner (run.ts) do.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

// Re-exported rather than copied: one definition of "a port that was free a moment ago".
export { freePort } from '../helpers/ports.ts';

// ---------------------------------------------------------------------------------------
// Child processes

export interface SpawnOptions {
  /** For messages: "echo", "bare-proxy", "zt-gateway". */
  readonly name: string;
  /** Arguments to this very node binary (the v24 one running us, not whatever is on PATH). */
  readonly args: readonly string[];
  /**
   * `json-line`: the child prints one JSON object on stdout when it is listening; we
   * wait for it and hand it back. `none`: stdout goes to /dev/null (a gateway's access
   * log at 10k lines/s would otherwise cost the parent — the load generator — CPU).
   */
  readonly ready: 'json-line' | 'none';
  readonly readyTimeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

export interface Child {
  readonly name: string;
  readonly pid: number;
  /** The ready line, parsed; `{}` for `ready: 'none'`. */
  readonly readyLine: Record<string, unknown>;
  /** Resolves with the exit code (or signal name) once the process is gone. */
  readonly exited: Promise<number | string>;
  /** The last few KiB the child wrote to stderr, for error messages. */
  stderrTail(): string;
}

const STDERR_TAIL_BYTES = 8 * 1024;

/**
 * Every child this harness starts is spawned through one ChildSet and killed by PID from
 * it: on normal exit, on error and on SIGINT/SIGTERM. Passed around, not a module global,
 * so a caller can see which processes it owns.
 */
export class ChildSet {
  readonly #live = new Map<number, { child: ChildProcess; exited: Promise<number | string> }>();

  async spawn(opts: SpawnOptions): Promise<Child> {
    const proc = spawn(process.execPath, [...opts.args], {
      // stdin is a pipe we never write to: our own child scripts exit when it closes, so
      // they die with us even if we are SIGKILLed and never get to clean up.
      stdio: ['pipe', opts.ready === 'json-line' ? 'pipe' : 'ignore', 'pipe'],
      env: opts.env ?? process.env,
    });
    if (proc.pid === undefined) {
      const err = await new Promise<Error>((resolve) => proc.once('error', resolve));
      throw new Error(`${opts.name}: spawn failed: ${err.message}`);
    }
    const pid = proc.pid;
    const exited = new Promise<number | string>((resolve) => {
      proc.once('exit', (code, signal) => {
        this.#live.delete(pid);
        resolve(code ?? signal ?? 'unknown');
      });
    });
    this.#live.set(pid, { child: proc, exited });

    let tail = '';
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (s: string) => {
      tail = (tail + s).slice(-STDERR_TAIL_BYTES);
    });
    const child = { name: opts.name, pid, exited, stderrTail: () => tail.trim() };

    if (opts.ready === 'none') return { ...child, readyLine: {} };

    const timeoutMs = opts.readyTimeoutMs ?? 15_000;
    const lines = createInterface({ input: proc.stdout! });
    try {
      const readyLine = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${opts.name}: no ready line within ${timeoutMs} ms`)), timeoutMs);
        lines.on('line', (line) => {
          try {
            const parsed: unknown = JSON.parse(line);
            if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
              clearTimeout(timer);
              resolve(parsed as Record<string, unknown>);
            }
          } catch {
            // Not the ready line (a warning, a banner); keep reading.
          }
        });
        void exited.then((how) => {
          clearTimeout(timer);
          reject(new Error(`${opts.name}: exited (${how}) before it was ready\n${tail.trim()}`));
        });
      });
      return { ...child, readyLine };
    } catch (err) {
      await this.stop(pid);
      throw err;
    } finally {
      // Keep draining stdout: a child blocked on a full pipe would stall the benchmark.
      lines.close();
      proc.stdout!.resume();
    }
  }

  /** SIGTERM, then SIGKILL if the process is still there after `graceMs`. */
  async stop(pid: number, graceMs = 3_000): Promise<void> {
    const entry = this.#live.get(pid);
    if (entry === undefined) return;
    signal(pid, 'SIGTERM');
    const gone = await Promise.race([entry.exited.then(() => true), sleep(graceMs).then(() => false)]);
    if (!gone) {
      signal(pid, 'SIGKILL');
      await Promise.race([entry.exited, sleep(1_000)]);
    }
    this.#live.delete(pid);
  }

  async stopAll(graceMs?: number): Promise<void> {
    await Promise.all([...this.#live.keys()].map((pid) => this.stop(pid, graceMs)));
  }

  /** For process.on('exit'), where nothing asynchronous runs any more. */
  killAllNow(): void {
    for (const pid of this.#live.keys()) signal(pid, 'SIGKILL');
    this.#live.clear();
  }

  get pids(): number[] {
    return [...this.#live.keys()];
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // already gone is fine
  }
}

/** Polls `url` until it answers 200; each attempt and the whole wait are bounded. */
export async function waitFor200(url: string, opts: { timeoutMs?: number; child?: Child } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let last = 'no answer yet';
  let exited: number | string | undefined;
  void opts.child?.exited.then((how) => (exited = how));
  while (Date.now() < deadline) {
    if (exited !== undefined) throw new Error(`${opts.child!.name}: exited (${exited}) before ${url} was ready\n${opts.child!.stderrTail()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      const body = await res.text();
      if (res.status === 200) return;
      last = `${res.status} ${body.slice(0, 300)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready in time (last: ${last})${opts.child ? `\n${opts.child.stderrTail()}` : ''}`);
}

// ---------------------------------------------------------------------------------------
// CPU

let ticksPerSecond: number | undefined;

/** The kernel's clock ticks per second (USER_HZ), the unit of CPU times in /proc. */
export function clockTicksPerSecond(): number {
  ticksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  return ticksPerSecond;
}

/**
 * CPU time (user + system, every thread) process `pid` has used so far, in µs, from
 * /proc/PID/stat; undefined where there is no /proc (not Linux) or the process is gone.
 * Requests/s on two shared cores swing with the neighbours; CPU per request swings less,
 * and it says where the cost is (gateway, upstream, load generator).
 */
export function processCpuMicros(pid: number): number | undefined {
  return statCpuMicros(`/proc/${pid}/stat`);
}

/** The same for one thread of a process (its main thread: tid = pid). */
export function threadCpuMicros(pid: number, tid: number): number | undefined {
  return statCpuMicros(`/proc/${pid}/task/${tid}/stat`);
}

function statCpuMicros(path: string): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after the command name, which is in parentheses and may itself hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // proc(5): utime and stime are fields 14 and 15, so 11 and 12 counted from field 3 (state).
  return ((Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond()) * 1e6;
}

// ---------------------------------------------------------------------------------------
// Load

// autocannon ships no types and @types/autocannon is not installed; this is the part of
// its programmatic API (README "autocannon(opts[, cb])" and "Results") we use.
interface AutocannonOptions {
  url: string;
  connections: number;
  pipelining: number;
  duration: number;
  headers: Record<string, string>;
  timeout: number;
  title?: string;
  /** Called with each connection's client as it is created (README "setupClient"). */
  setupClient?: (client: AutocannonClient) => void;
}
/** A connection: the requests it cycles through (each serialised once, up front), and its events. */
interface AutocannonClient {
  setRequests(requests: { headers: Record<string, string> }[]): void;
  on(event: 'response', listener: () => void): void;
}
interface Histogram {
  average: number;
  total: number;
  p50: number;
  p99: number;
}
interface AutocannonResult {
  requests: Histogram & { sent: number };
  latency: Histogram;
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
  statusCodeStats: Record<string, { count: number }>;
}
interface AutocannonInstance {
  stop(): void;
}
type Autocannon = (opts: AutocannonOptions, cb: (err: Error | null, result: AutocannonResult) => void) => AutocannonInstance;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

export interface LoadOptions {
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly connections: number;
  readonly pipelining: number;
  readonly durationS: number;
  readonly title?: string;
  /**
   * Headers that must differ from one request to the next (a DPoP proof), merged over
   * `headers`, each set sent at most once (see runAutocannon, runWrk).
   */
  readonly headerPool?: HeaderPool;
}

/** Headers prepared ahead of a run, one set per request (see RunningTarget.headerPool). */
export interface HeaderPool {
  readonly sets: readonly Record<string, string>[];
  /** Each set may be sent once (DPoP proofs): a connection that runs out is an `overrun` and fails the run. Otherwise sets are re-sent in turn. */
  readonly singleUse: boolean;
}

export interface LoadResult {
  /** Mean of autocannon's per-second samples, as its own table reports it. */
  readonly reqPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly responses: number;
  readonly ok2xx: number;
  readonly non2xx: number;
  /** Connection errors, timeouts included. */
  readonly errors: number;
  readonly statusCodes: Record<string, number>;
  /** With a header pool: requests sent after their connection's share of it was used up (each re-sent a set; only a single-use pool's caller cares). */
  readonly overrun: number;
  /** CPU time this process (the load generator) used while the load ran, in µs; requests prepared up front not included. */
  readonly generatorCpuMicros: number;
}

/**
 * One autocannon run, in this process: the bench's default generator (wrk.ts has the
 * other). It stops by itself after `durationS`; should it not (a wedged server), a
 * watchdog stops it and the run fails rather than hanging the benchmark.
 */
export function runAutocannon(opts: LoadOptions): Promise<LoadResult> {
  const watchdogMs = (opts.durationS + 15) * 1000;
  // With a header pool, each connection gets its own share of it as a list of requests,
  // serialised by autocannon before the run starts; it then resends prepared bytes, as
  // for a fixed request. (A setupRequest rebuilt every request in autocannon's hot loop:
  // ~25 µs of load-generator CPU per request, on the two cores the servers use too.) A
  // connection that has sent its whole share starts over from its first set; for a
  // single-use pool those are counted: a gateway refuses a proof it has seen, and the run
  // must say why.
  const shares = opts.headerPool === undefined ? undefined : split(opts.headerPool.sets, opts.connections);
  let overrun = 0;
  let clientsSetUp = 0;
  const setupClient = (client: AutocannonClient): void => {
    const share = shares![clientsSetUp++ % shares!.length]!;
    client.setRequests(share.map((headers) => ({ headers })));
    let responses = 0;
    client.on('response', () => {
      if (++responses > share.length) overrun++;
    });
  };
  return new Promise((resolve, reject) => {
    let watchdog: NodeJS.Timeout | undefined;
    const instance = autocannon(
      {
        url: opts.url,
        connections: opts.connections,
        pipelining: opts.pipelining,
        duration: opts.durationS,
        headers: opts.headers,
        timeout: 5,
        title: opts.title,
        ...(shares !== undefined && { setupClient }),
      },
      (err, result) => {
        clearTimeout(watchdog);
        const generator = process.cpuUsage(generatorCpuBefore);
        if (err) return reject(err);
        const statusCodes: Record<string, number> = {};
        for (const [code, { count }] of Object.entries(result.statusCodeStats)) statusCodes[code] = Number(count);
        resolve({
          reqPerSec: result.requests.average,
          p50Ms: result.latency.p50,
          p99Ms: result.latency.p99,
          responses: result.requests.total,
          ok2xx: result['2xx'],
          non2xx: result.non2xx,
          errors: result.errors,
          statusCodes,
          overrun,
          generatorCpuMicros: generator.user + generator.system,
        });
      },
    );
    // autocannon serialises every prepared request before it returns; the run starts after.
    const generatorCpuBefore = process.cpuUsage();
    watchdog = setTimeout(() => {
      instance.stop();
      reject(new Error(`load run against ${opts.url} did not stop within ${watchdogMs} ms`));
    }, watchdogMs);
  });
}

/** `sets` dealt round-robin into `n` lists (never empty: n is capped at the number of sets). */
function split<T>(sets: readonly T[], n: number): T[][] {
  if (sets.length === 0) throw new RangeError('empty header pool');
  const shares: T[][] = Array.from({ length: Math.min(n, sets.length) }, () => []);
  sets.forEach((set, i) => shares[i % shares.length]!.push(set));
  return shares;
}

/** A run is clean when every response was 2xx and no request failed or timed out. */
export function problemsOf(r: LoadResult): string | undefined {
  if (r.non2xx === 0 && r.errors === 0 && r.ok2xx > 0) return undefined;
  const codes = Object.entries(r.statusCodes)
    .map(([code, n]) => `${code}×${n}`)
    .join(' ');
  return `${r.non2xx} non-2xx, ${r.errors} errors/timeouts, ${r.ok2xx} 2xx (status codes: ${codes || 'none'})`;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of nothing');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export interface Summary {
  readonly rounds: readonly LoadResult[];
  /** Each metric's median across rounds, taken separately. */
  readonly reqPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

export function summarize(rounds: readonly LoadResult[]): Summary {
  return {
    rounds,
    reqPerSec: median(rounds.map((r) => r.reqPerSec)),
    p50Ms: median(rounds.map((r) => r.p50Ms)),
    p99Ms: median(rounds.map((r) => r.p99Ms)),
  };
}

/** Fixed-width text table; the first column left-aligned, the rest right-aligned. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
