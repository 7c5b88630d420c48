// On-demand CPU profiles and heap snapshots, the Node counterpart of Go's /debug/pprof. The
// outputs load in Chrome DevTools or speedscope. Both cost the data plane: a CPU profile adds
// sampling load for its duration; a heap snapshot stops the whole process while V8 walks the
// heap (there is no way to take one off the main thread), so one at a time, never queued.
import { Session } from 'node:inspector/promises';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { writeHeapSnapshot } from 'node:v8';

export const MAX_PROFILE_SECONDS = 60;
export const DEFAULT_PROFILE_SECONDS = 10;

/**
 * `?seconds=`: one or two decimal digits, 1..MAX_PROFILE_SECONDS. A strict pattern rather than
 * Number(): "1e1", "0x10", " 5", "5.0" and "Infinity" all mean a number to Number().
 */
export function parseProfileSeconds(value: unknown): number | undefined {
  if (value === undefined) return DEFAULT_PROFILE_SECONDS;
  if (typeof value !== 'string' || !/^[0-9]{1,2}$/.test(value)) return undefined;
  const seconds = Number(value);
  return seconds >= 1 && seconds <= MAX_PROFILE_SECONDS ? seconds : undefined;
}

// Module state on purpose: the inspector and the heap belong to the process, not to a gateway,
// so two gateways in one process (tests, an embedding) share this lock as they share the heap.
let profilerBusy = false;

/** Takes the process's one profiling slot: a release function, or undefined when it is taken. */
export function acquireProfiler(): (() => void) | undefined {
  if (profilerBusy) return undefined;
  profilerBusy = true;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    profilerBusy = false;
  };
}

/** Samples the CPU for `seconds` (less if `signal` aborts: the client left) and returns a .cpuprofile document. */
export async function cpuProfile(seconds: number, signal?: AbortSignal): Promise<unknown> {
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, seconds * 1000);
      if (signal?.aborted) done();
      else signal?.addEventListener('abort', done, { once: true });
    });
    const { profile } = await session.post('Profiler.stop');
    return profile;
  } finally {
    session.disconnect();
  }
}

export interface HeapSnapshotFile {
  /** The private directory the snapshot sits in (mode 0700, under os.tmpdir()). */
  readonly dir: string;
  /** The .heapsnapshot file (mode 0600). */
  readonly file: string;
  /** How long the process was stopped writing it: every request on this instance waited this long. */
  readonly stallMs: number;
  /** Deletes the file and its directory. */
  remove(): Promise<void>;
}

/**
 * Writes a heap snapshot to a fresh private file. V8 streams it to disk as it walks the heap,
 * so the snapshot is never held in memory whole; the caller then streams the file out with the
 * socket's backpressure. (Through an inspector session instead, the chunks arrive in-thread,
 * synchronously, faster than any client reads: all of it would sit in memory.)
 */
export async function writeHeapSnapshotFile(): Promise<HeapSnapshotFile> {
  const dir = await mkdtemp(join(tmpdir(), 'ztgw-heap-')); // mkdtemp(3) creates it 0700
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const file = join(dir, 'ztgw.heapsnapshot');
    // Created 0600 before V8 opens it: V8 truncates an existing file and keeps its mode.
    await (await open(file, 'wx', 0o600)).close();
    const started = performance.now();
    writeHeapSnapshot(file);
    const stallMs = performance.now() - started;
    return { dir, file, stallMs, remove };
  } catch (err) {
    await remove();
    throw err;
  }
}
