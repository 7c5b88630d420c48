// What a reload may change and how reloads take turns. A config reload and a policy-dir
// edit go through one queue: each compiles a whole Runtime (config + policy set + their
// cross-references) aside and swaps it in by one reference, so two never interleave and a
// policy edit is always checked against the config it will run with.
import type { Config } from './schema.ts';

/** JSON with object keys sorted: equal sections give equal strings, whatever the key order in the file. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

/**
 * Fields read once at start (listeners, connections, log streams), each as the config path
 * an operator sees. A reload that changes one applies everything else and reports these as
 * "restart required": refusing the whole reload would hold back a policy fix or a key
 * rotation for the sake of a field that could not take effect anyway.
 */
const RESTART_ONLY: readonly { readonly path: string; readonly of: (c: Config) => unknown }[] = [
  { path: 'server.listen', of: (c) => c.server.listen },
  { path: 'server.admin', of: (c) => c.server.admin },
  { path: 'server.profiling', of: (c) => c.server.profiling },
  { path: 'server.logLevel', of: (c) => c.server.logLevel },
  // Certificate files are re-read on every reload; turning TLS on or off changes the listener.
  { path: 'server.tls', of: (c) => c.server.tls !== undefined },
  { path: 'server.tls.clientCaFile', of: (c) => c.server.tls?.clientCaFile !== undefined },
  { path: 'redis', of: (c) => c.redis },
  // The rate-limit store and its connection live as long as the process (config/services.ts);
  // tiers and which routes apply them reload.
  { path: 'limits.store', of: (c) => [c.limits.store, c.limits.redis, c.limits.maxLocalKeys] },
  { path: 'limits.timeoutMs', of: (c) => [c.limits.timeoutMs, c.limits.expectedInstances] },
  { path: 'devices.registry', of: (c) => c.devices.registry },
  { path: 'devices.fingerprint', of: (c) => c.devices.fingerprint },
  { path: 'identity.dpop.replayCacheMaxEntries', of: (c) => [c.identity.dpop.replayCacheMaxEntries, c.identity.dpop.replayCacheKeyShare] },
  { path: 'policies.decisionLog.file', of: (c) => c.policies?.decisionLog.file },
  // The feature extractor's histories live as long as the process (config/services.ts).
  { path: 'risk.maxPrincipals', of: (c) => c.risk?.maxPrincipals ?? 20_000 },
];

/** The restart-only fields that differ between the config running since start and `next`. */
export function restartRequired(started: Config, next: Config): string[] {
  return RESTART_ONLY.filter((f) => stableJson(f.of(started)) !== stableJson(f.of(next))).map((f) => f.path);
}

/** `config` re-reads the config file (and the policies with it); `policies` recompiles the policy dir against the running config. */
export type ReloadKind = 'config' | 'policies';

/**
 * Runs one reload at a time. A request made while one runs waits for it, then runs once for
 * every request made meanwhile (they coalesce: the files are read when it starts, so it sees
 * the latest of them); a config request covers a policy one, not the other way round.
 */
export function createReloadQueue<R>(run: (kind: ReloadKind) => Promise<R>): (kind: ReloadKind) => Promise<R> {
  let running: Promise<unknown> = Promise.resolve();
  let queued: { kind: ReloadKind; result: Promise<R> } | undefined;
  return (kind) => {
    if (queued !== undefined) {
      if (kind === 'config') queued.kind = 'config';
      return queued.result;
    }
    const entry: { kind: ReloadKind; result: Promise<R> } = { kind, result: undefined as unknown as Promise<R> };
    entry.result = running.then(() => {
      queued = undefined; // from here a new request queues behind this run
      return run(entry.kind);
    });
    queued = entry;
    running = entry.result.catch(() => undefined);
    return entry.result;
  };
}
