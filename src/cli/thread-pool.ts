// How many threads libuv's pool gets. It runs every DPoP proof's signature check (the
// callback form of crypto.verify; see identity/jws-signature.ts) besides DNS lookups and
// file reads. Node's default is 4 whatever the machine: on 2 cores, 4 threads checking
// signatures contend with the event loop and each other. Two interleaved A/B runs on 2
// cores: a DPoP request cost 124 → 112 and 115 → 111 µs of CPU with 2 threads instead of
// 4 (0.49 → 0.55 and 0.49 → 0.50 of the bare proxy's requests/s); on a bigger machine
// the default would leave cores idle. So one thread per core, never fewer than 2: one
// slow DNS lookup must not hold up every proof check behind it.
//
// libuv reads UV_THREADPOOL_SIZE once, when the pool starts on first use, so this runs
// before anything else is loaded (ztgw.ts). An operator's own UV_THREADPOOL_SIZE wins:
// availableParallelism() sees the host's cores, not a container's CPU quota.
import { access } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { getPriority, setPriority } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

const MIN_THREADS = 2;
const MAX_THREADS = 1024; // libuv's own ceiling

/** The UV_THREADPOOL_SIZE to set, or undefined when the operator has set one. */
export function threadPoolSize(env: NodeJS.ProcessEnv, cores: number): string | undefined {
  if (env.UV_THREADPOOL_SIZE !== undefined && env.UV_THREADPOOL_SIZE.trim() !== '') return undefined;
  return String(Math.min(MAX_THREADS, Math.max(MIN_THREADS, Math.floor(cores))));
}

// The pool's threads also run below the event loop (10 nice levels by default). When the box is
// short of CPU, every request waits for the event loop, one at a time, while a proof check
// on the pool only has to finish before its own request resumes; at equal priority the
// kernel shared the cores evenly and the event loop spent a fifth of its time runnable but
// not running. Measured on 2 cores under DPoP load (wrk, 3 interleaved rounds each): event
// loop waiting 20-21% → 11-14% of the time, CPU per request 309-358 → 277-294 µs,
// requests/s 3,813-4,308 → 4,792-5,236. The pool still gets any idle core, and at nice 10
// about a tenth of a contended one, so its work is delayed, never starved. Linux only: there
// a thread has its own nice value (setpriority(2)), which os.setPriority sets by thread id.
// Relative to the process's own: a gateway started at nice 5 gets its pool at 15.

export const DEFAULT_POOL_NICE = 10;
const MAX_NICE = 19;
const POOL_THREAD_NAME = 'libuv-worker';
/** libuv starts its threads together but each names itself; how long to wait for all the names. */
const NAMES_WAIT_MS = 2_000;

/** How many nice levels below the event loop the pool's threads run, from ZTGW_POOL_NICE (0 leaves them alone); throws on anything but an integer 0-19. */
export function poolNice(env: NodeJS.ProcessEnv): number {
  const raw = env.ZTGW_POOL_NICE?.trim();
  if (raw === undefined || raw === '') return DEFAULT_POOL_NICE;
  const nice = Number(raw);
  if (!/^\d+$/.test(raw) || nice > MAX_NICE) throw new RangeError(`ZTGW_POOL_NICE must be an integer from 0 to ${MAX_NICE}, not "${raw}"`);
  return nice;
}

/**
 * Puts this process's libuv pool threads `levels` nice levels below its main thread (at
 * most 19), starting the pool first if nothing has; resolves with how many threads it
 * changed (0 off Linux or when `levels` is 0).
 */
export async function lowerPoolPriority(levels: number, expectedThreads: number): Promise<number> {
  if (levels === 0 || process.platform !== 'linux') return 0;
  const nice = Math.min(MAX_NICE, getPriority() + levels);
  // Any request to the pool starts all of its threads (a no-op file check is the cheapest).
  await new Promise((done) => access('/', done));
  const deadline = Date.now() + NAMES_WAIT_MS;
  let threads = await poolThreadIds();
  while (threads.length < expectedThreads && Date.now() < deadline) {
    await sleep(20);
    threads = await poolThreadIds();
  }
  for (const tid of threads) setPriority(tid, nice);
  return threads.length;
}

async function poolThreadIds(): Promise<number[]> {
  const ids: number[] = [];
  for (const tid of await readdir('/proc/self/task')) {
    const name = await readFile(`/proc/self/task/${tid}/comm`, 'utf8').catch(() => '');
    if (name.trim() === POOL_THREAD_NAME) ids.push(Number(tid));
  }
  return ids;
}
