// The live policy set: compiled at start (a bad set stops the gateway), then watched. A
// change recompiles the whole directory aside; only a set that compiled completely is
// swapped in, in one assignment, so a request evaluates against one set from start to end.
// A broken edit keeps the last good set, is logged with file:line:col, counted, and shown
// on /readyz — never an empty set, never fail-open. Whatever the files hold, a reload
// reports a result and never throws: it runs in a timer, where an exception would end
// the process (as `request.constructor` in a condition once did).
import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from 'pino';
import { ConfigError, formatIssue, type ConfigIssue } from '../config/load.ts';
import { createEvaluator, type Evaluator } from './evaluate.ts';
import { loadPolicyDir, type KnownNames, type PolicyLoadResult } from './load.ts';

export interface PolicySource {
  /** The evaluator of the last good set; read it once per decision. */
  readonly current: Evaluator;
  /** Why the last reload failed, until one succeeds. */
  readonly lastError: string | undefined;
  /** Recompiles now (the watcher calls this); resolves with the issues, or undefined when swapped in. */
  reload(): ConfigIssue[] | undefined;
  close(): void;
}

export interface PolicySourceOptions {
  readonly dir: string;
  readonly known: KnownNames;
  readonly logger: Logger;
  readonly debounceMs: number;
  readonly onReload?: (result: 'ok' | 'failed') => void;
  /** Off in tests that drive reload() themselves. */
  readonly watch?: boolean;
  /** How the directory is compiled (tests inject failures); loadPolicyDir by default. */
  readonly load?: typeof loadPolicyDir;
}

/** Throws ConfigError (file:line:col issues) when the initial set does not compile. */
export function createPolicySource(opts: PolicySourceOptions): PolicySource {
  const load = opts.load ?? loadPolicyDir;
  const first = load(opts.dir, opts.known);
  if (!first.ok) throw new ConfigError(first.issues);
  let current = createEvaluator(first.set);
  let lastError: string | undefined;
  opts.logger.info({ policySet: first.set.hash, policies: first.set.policies.length, dir: opts.dir }, 'policies loaded');
  warn(opts.logger, first.warnings);

  const failed = (issues: ConfigIssue[]): ConfigIssue[] => {
    lastError = issues.map(formatIssue).join('\n');
    opts.logger.error({ issues: issues.map(formatIssue), keeping: current.set.hash }, 'policy reload failed; keeping the last good set');
    report(opts, 'failed');
    return issues;
  };

  const reload = (): ConfigIssue[] | undefined => {
    let next: PolicyLoadResult;
    let evaluator: Evaluator | undefined;
    try {
      next = load(opts.dir, opts.known);
      if (next.ok && next.set.hash !== current.set.hash) evaluator = createEvaluator(next.set);
    } catch (err) {
      // load.ts refuses bad text without throwing; this is for what nobody foresaw.
      return failed([{ file: opts.dir, line: 1, col: 1, field: '', message: `the policy set could not be compiled (${err instanceof Error ? err.message : String(err)})` }]);
    }
    if (!next.ok) return failed(next.issues);
    lastError = undefined;
    if (evaluator !== undefined) {
      current = evaluator;
      opts.logger.info({ policySet: next.set.hash, policies: next.set.policies.length }, 'policies reloaded');
      warn(opts.logger, next.warnings);
    }
    report(opts, 'ok');
    return undefined;
  };

  // Editors save by rename or several writes; wait for the burst to settle, then compile once.
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  if (opts.watch !== false) {
    watcher = watch(opts.dir, () => {
      clearTimeout(timer);
      timer = setTimeout(() => void reload(), opts.debounceMs);
    });
    watcher.on('error', (err) => opts.logger.error({ err: err.message, dir: opts.dir }, 'policy directory watch failed; reload with SIGHUP'));
  }

  return {
    get current() {
      return current;
    },
    get lastError() {
      return lastError;
    },
    reload,
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}

function warn(logger: Logger, warnings: readonly ConfigIssue[]): void {
  if (warnings.length > 0) logger.warn({ warnings: warnings.map(formatIssue) }, 'policy conditions to review');
}

/** The reload's outcome to the caller's hook (a metric); a hook that throws must not undo the reload. */
function report(opts: PolicySourceOptions, result: 'ok' | 'failed'): void {
  try {
    opts.onReload?.(result);
  } catch (err) {
    opts.logger.error({ err }, 'policy reload hook failed');
  }
}
