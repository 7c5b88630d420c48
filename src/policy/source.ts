// The policy directory, watched. The set itself is not kept here: it is part of the
// gateway's Runtime (config/compile.ts), compiled against the config it runs with and
// swapped with it, so a policy edit and a config reload go through one serialised path
// (gateway.ts). A broken edit keeps the last good Runtime; whatever the files hold, the
// compile reports a result and never throws (it runs from a timer, where an exception
// would end the process, as `request.constructor` in a condition once did).
import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from 'pino';

export interface PolicyDirWatch {
  readonly dir: string;
  close(): void;
}

/**
 * Calls `onChange` once a burst of edits in `dir` has settled. The gateway's reload queue
 * does the rest: it compiles the directory against the running config and swaps the whole
 * Runtime, so a watcher never holds a set of its own. `onChange` must not throw.
 */
export function watchPolicyDir(opts: { dir: string; debounceMs: number; logger: Logger; onChange: () => void }): PolicyDirWatch {
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(opts.dir, () => {
      clearTimeout(timer);
      timer = setTimeout(opts.onChange, opts.debounceMs);
    });
    watcher.on('error', (err) => opts.logger.error({ err: err.message, dir: opts.dir }, 'policy directory watch failed; reload with SIGHUP'));
  } catch (err) {
    // The set compiled from this directory a moment ago; it may be gone now. SIGHUP still works.
    opts.logger.error({ err: (err as Error).message, dir: opts.dir }, 'policy directory cannot be watched; reload with SIGHUP');
  }
  return {
    dir: opts.dir,
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
