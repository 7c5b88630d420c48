// The live policy set: compiled at start (a bad set stops the gateway), then watched. A
// change recompiles the whole directory aside; only a set that compiled completely is
// swapped in, in one assignment, so a request evaluates against one set from start to end.
// A broken edit keeps the last good set, is logged with file:line:col, counted, and shown
// on /readyz — never an empty set, never fail-open.
import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from 'pino';
import { ConfigError, formatIssue, type ConfigIssue } from '../config/load.ts';
import { createEvaluator, type Evaluator } from './evaluate.ts';
import { loadPolicyDir, type KnownNames } from './load.ts';

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
}

/** Throws ConfigError (file:line:col issues) when the initial set does not compile. */
export function createPolicySource(opts: PolicySourceOptions): PolicySource {
  const first = loadPolicyDir(opts.dir, opts.known);
  if (!first.ok) throw new ConfigError(first.issues);
  let current = createEvaluator(first.set);
  let lastError: string | undefined;
  opts.logger.info({ policySet: first.set.hash, policies: first.set.policies.length, dir: opts.dir }, 'policies loaded');

  const reload = (): ConfigIssue[] | undefined => {
    const next = loadPolicyDir(opts.dir, opts.known);
    if (!next.ok) {
      lastError = next.issues.map(formatIssue).join('\n');
      opts.logger.error({ issues: next.issues.map(formatIssue), keeping: current.set.hash }, 'policy reload failed; keeping the last good set');
      opts.onReload?.('failed');
      return next.issues;
    }
    lastError = undefined;
    if (next.set.hash !== current.set.hash) {
      current = createEvaluator(next.set);
      opts.logger.info({ policySet: next.set.hash, policies: next.set.policies.length }, 'policies reloaded');
    }
    opts.onReload?.('ok');
    return undefined;
  };

  // Editors save by rename or several writes; wait for the burst to settle, then compile once.
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  if (opts.watch !== false) {
    watcher = watch(opts.dir, () => {
      clearTimeout(timer);
      timer = setTimeout(reload, opts.debounceMs);
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
