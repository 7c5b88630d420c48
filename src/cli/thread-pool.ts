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

const MIN_THREADS = 2;
const MAX_THREADS = 1024; // libuv's own ceiling

/** The UV_THREADPOOL_SIZE to set, or undefined when the operator has set one. */
export function threadPoolSize(env: NodeJS.ProcessEnv, cores: number): string | undefined {
  if (env.UV_THREADPOOL_SIZE !== undefined && env.UV_THREADPOOL_SIZE.trim() !== '') return undefined;
  return String(Math.min(MAX_THREADS, Math.max(MIN_THREADS, Math.floor(cores))));
}
