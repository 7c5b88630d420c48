// A running gateway: data plane + admin plane around one swappable Runtime, with reload
// (build aside, swap, keep the old one on failure) and graceful drain. Used by `ztgw serve`,
// the demo and the tests alike.
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import type { DestinationStream, Logger } from 'pino';
import { compilePolicyEdit, compileRuntime, type CompileDeps, type Runtime, type RuntimeHolder } from './config/compile.ts';
import { loadConfigFile } from './config/load.ts';
import { ConfigError, formatIssue, type ConfigIssue } from './core/diagnostics.ts';
import { issueAt } from './core/diagnostics.ts';
import { createReloadQueue, restartRequired, type ReloadKind } from './config/reload.ts';
import type { Config } from './config/schema.ts';
import { buildAdminPlane } from './admin/admin-plane.ts';
import { loadAdminCredential } from './admin/admin-token.ts';
import { createLoggers, LogFileError, type Loggers } from './observability/logging.ts';
import { createMetrics, type GatewayMetrics } from './observability/metrics.ts';
import { buildDataPlane, type RiskTraceLine } from './server/data-plane.ts';
import type { Evaluator } from './policy/evaluate.ts';
import { watchPolicyDir, type PolicyDirWatch } from './policy/source.ts';
import { createServices, type Services } from './config/services.ts';

export type ConfigSource = { file: string; env?: NodeJS.ProcessEnv } | { config: Config; dir: string };

export interface GatewayOptions {
  readonly source: ConfigSource;
  /** Where logs go; stdout by default. */
  readonly logDestination?: DestinationStream;
  readonly now?: () => number;
  /** Every request the risk model saw, as a trace line with its score, when its response ends (tests, debugging). */
  readonly onRiskTrace?: (line: RiskTraceLine) => void;
}

/**
 * How long a replaced risk model stays open: requests that started on the old Runtime and
 * have not reached the risk stage yet still score with it (authn may wait on a JWKS fetch).
 */
const RETIRED_MODEL_GRACE_MS = 30_000;

/** The running policy set (holder.current's) and why the last reload failed; undefined without a policies section. */
export interface PolicyView {
  readonly current: Evaluator;
  readonly lastError: string | undefined;
}

export interface Gateway {
  readonly url: string;
  readonly adminUrl: string;
  readonly holder: RuntimeHolder;
  readonly services: Services & { readonly policies: PolicyView | undefined };
  readonly metrics: GatewayMetrics;
  readonly logger: Logger;
  /**
   * Re-reads the config source and the policy directory and compiles them as one Runtime;
   * on failure the running one stays and the error is returned. Serialised with policy-dir
   * edits: a call made while a reload runs waits for it.
   */
  reload(): Promise<Error | undefined>;
  /** Stops taking requests, lets in-flight ones finish within the shutdown deadline, then closes. */
  close(): Promise<void>;
}

function loadSource(source: ConfigSource): { config: Config; dir: string; text?: string } {
  if ('config' in source) return source;
  const { config, dir, text } = loadConfigFile(source.file, source.env);
  return { config, dir, text };
}

function urlOf(address: AddressInfo | string | null, tls = false): string {
  if (address === null || typeof address === 'string') throw new Error('listener has no TCP address');
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `${tls ? 'https' : 'http'}://${host}:${address.port}`;
}

/** After the shutdown deadline cut the last connections, how long close() waits for them to close (and be logged). */
const CUT_LINES_WAIT_MS = 1_000;

/** Throws ConfigError (with file:line issues) or a compile error before anything listens. */
export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  const initial = loadSource(opts.source);
  // Read once, before anything starts: a missing or weak admin token is a config error (exit 2).
  const fromFile = 'file' in opts.source ? opts.source : undefined;
  const adminCredential = loadAdminCredential(initial.config, initial.dir, fromFile?.env ?? process.env, {
    file: fromFile?.file ?? resolve(initial.dir, '(config)'),
    text: initial.text,
  });
  const decisionFile = initial.config.policies?.decisionLog.file;
  let loggers: Loggers;
  try {
    loggers = createLoggers(initial.config.server.logLevel, opts.logDestination, decisionFile === undefined ? undefined : resolve(initial.dir, decisionFile));
  } catch (err) {
    // A decision log that cannot be opened is the config's problem (exit 2), named at its line.
    if (!(err instanceof LogFileError)) throw err;
    const where = { file: fromFile?.file ?? resolve(initial.dir, '(config)'), text: initial.text };
    throw new ConfigError([issueAt(where, ['policies', 'decisionLog', 'file'], err.message)], { cause: err });
  }
  const { logger, access, decisions } = loggers;
  const metrics = createMetrics();
  const services = await createServices(initial.config, initial.dir, logger, metrics);
  const depsFor = (configDir: string): CompileDeps => ({ configDir, services, decisionLog: decisions, logger, metrics, now: opts.now });
  const compile = (next: { config: Config; dir: string }, previous?: Runtime) => compileRuntime(next.config, { ...depsFor(next.dir), previous });
  let holder: RuntimeHolder;
  try {
    holder = { current: await compile(initial) };
  } catch (err) {
    await services.close();
    throw err;
  }
  logPolicies(logger, holder.current, undefined);
  const server = holder.current.config.server;
  let draining = false;
  // A policy edit that compiles does not clear a config reload's failure: the file still holds it.
  const failures: { config?: string; policies?: string } = {};
  const lastReloadError = () => failures.config ?? failures.policies;
  let restartFields: readonly string[] = [];
  metrics.configRestartRequired.set(0);
  const isDraining = () => draining;

  const drainDeadline = new AbortController();
  const data = buildDataPlane({
    holder,
    logger,
    accessLogger: access,
    metrics,
    isDraining,
    drainDeadline: drainDeadline.signal,
    configDir: initial.dir,
    now: opts.now,
    onRiskTrace: opts.onRiskTrace,
  });
  // Replaced risk models, each closed after its grace, or at once by close().
  const retiring = new Map<NonNullable<NonNullable<Runtime['risk']>['loaded']>, NodeJS.Timeout>();
  const closeRetired = (model: NonNullable<NonNullable<Runtime['risk']>['loaded']>): Promise<void> => {
    clearTimeout(retiring.get(model));
    retiring.delete(model);
    return model.close().catch((err: unknown) => logger.warn({ err }, 'closing a replaced risk model failed'));
  };
  const retireModel = (old: Runtime, next: Runtime): void => {
    const model = old.risk?.loaded;
    if (model === undefined || model === next.risk?.loaded || retiring.has(model)) return;
    retiring.set(model, setTimeout(() => void closeRetired(model), RETIRED_MODEL_GRACE_MS).unref());
  };
  const admin = buildAdminPlane({
    holder,
    services,
    logger,
    metrics,
    isDraining,
    lastReloadError,
    restartRequired: () => restartFields,
    credential: adminCredential,
  });
  try {
    await data.listen({ host: server.listen.host, port: server.listen.port });
    await admin.listen({ host: server.admin.host, port: server.admin.port });
  } catch (err) {
    await data.close();
    holder.current.upstreamGuard.shutdown();
    await holder.current.risk?.loaded?.close();
    await services.close();
    throw err;
  }
  const url = urlOf(data.server.address(), server.tls !== undefined);
  const adminUrl = urlOf(admin.server.address());
  logger.info({ url, adminUrl, config: holder.current.version, routes: holder.current.routes.length }, 'gateway listening');

  // The policy directory of the running Runtime is watched; an edit recompiles it against
  // the running config through the same queue as SIGHUP. A reload that moves the directory
  // (or adds or drops the section, or changes the debounce) moves the watch with it.
  let watching: { key: string; watch: PolicyDirWatch } | undefined;
  const followPolicyDir = (): void => {
    const section = holder.current.config.policies;
    const dir = holder.current.policies?.dir;
    const key = section === undefined || dir === undefined ? undefined : `${dir}\u0000${section.reloadDebounceMs}`;
    if (key === watching?.key) return;
    watching?.watch.close();
    watching = key === undefined ? undefined : { key, watch: watchPolicyDir({ dir: dir!, debounceMs: section!.reloadDebounceMs, logger, onChange: () => void reload('policies') }) };
  };

  const runReload = async (kind: ReloadKind): Promise<Error | undefined> => {
    const running = holder.current;
    try {
      // A policy edit is compiled against the running config, not whatever the file holds now,
      // and changes only the policy set and the stage that reads it.
      const runtime = kind === 'config' ? await compile(loadSource(opts.source), running) : await compilePolicyEdit(running, depsFor(initial.dir));
      if (draining) {
        // Not swapped in: its breakers (adopted from the running guard) stop with it.
        if (runtime.upstreamGuard !== running.upstreamGuard) runtime.upstreamGuard.shutdown();
        if (runtime.risk?.loaded !== undefined && runtime.risk.loaded !== running.risk?.loaded) await runtime.risk.loaded.close();
        return undefined;
      }
      // Certificates rotate with the Runtime: new TLS connections get the new pair.
      if (runtime.tls !== undefined && runtime.tls !== running.tls && 'setSecureContext' in data.server) {
        (data.server as HttpsServer).setSecureContext({ ...runtime.tls, minVersion: 'TLSv1.2' });
      }
      holder.current = runtime;
      // The replaced guard's breakers stop (those the new one adopted live on); requests still
      // running on the old Runtime finish with it, unrefused.
      if (runtime.upstreamGuard !== running.upstreamGuard) running.upstreamGuard.shutdown();
      retireModel(running, runtime);
      failures.policies = undefined;
      if (kind === 'config') failures.config = undefined;
      followPolicyDir();
      logPolicies(logger, runtime, running);
      if (kind === 'policies') {
        metrics.policyReloads.inc({ result: 'ok' });
        return undefined;
      }
      restartFields = restartRequired(initial.config, runtime.config);
      metrics.configRestartRequired.set(restartFields.length > 0 ? 1 : 0);
      if (restartFields.length > 0) {
        logger.warn({ fields: restartFields }, 'restart required: these config changes are not applied until the gateway restarts; the rest of the reload is');
      }
      metrics.configReloads.inc({ result: 'ok' });
      logger.info({ config: runtime.version }, 'config reloaded');
      return undefined;
    } catch (err) {
      failures[kind] = (err as Error).message;
      const issues = err instanceof ConfigError ? { issues: err.issues.map(formatIssue) } : { err };
      if (kind === 'policies') {
        metrics.policyReloads.inc({ result: 'failed' });
        logger.error({ ...issues, keeping: running.policies?.evaluator.set.hash }, 'policy reload failed; keeping the last good set');
      } else {
        metrics.configReloads.inc({ result: 'failed' });
        logger.error({ ...issues, keeping: running.version }, 'config reload failed; keeping the running config');
      }
      return err as Error;
    }
  };
  const reload = createReloadQueue(runReload);
  followPolicyDir();

  const policyView: PolicyView = {
    get current() {
      return holder.current.policies!.evaluator;
    },
    get lastError() {
      return lastReloadError();
    },
  };
  const gatewayServices = Object.defineProperty({ ...services }, 'policies', {
    get: () => (holder.current.policies === undefined ? undefined : policyView),
    enumerable: true,
  }) as Gateway['services'];

  return {
    url,
    adminUrl,
    holder,
    services: gatewayServices,
    metrics,
    logger,
    reload: () => reload('config'),
    async close() {
      draining = true;
      watching?.watch.close();
      const deadline = holder.current.config.server.timeouts.shutdownMs;
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<'expired'>((resolve) => {
        timer = setTimeout(() => resolve('expired'), deadline);
      });
      // Fastify's close waits for in-flight requests and closes idle keep-alive sockets.
      const closed = data.close().then(() => 'drained' as const);
      const outcome = await Promise.race([closed, expired]);
      clearTimeout(timer);
      if (outcome === 'expired') {
        logger.warn({ deadlineMs: deadline }, 'shutdown deadline passed; closing remaining connections');
        drainDeadline.abort(); // first: the requests cut next are logged as cut by the gateway
        data.server.closeAllConnections();
        // Their access lines are written as their sockets close, in the loop's close phase, after
        // the server's own 'close' (a tick): one timer turn later they are all in.
        await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, CUT_LINES_WAIT_MS).unref())]);
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      await admin.close();
      holder.current.upstreamGuard.shutdown();
      // Nothing scores any more: replaced models close now, not after their grace.
      await Promise.all([...retiring.keys()].map(closeRetired));
      await holder.current.risk?.loaded?.close();
      await services.close();
      logger.info({ outcome }, 'gateway stopped');
      await loggers.flush(); // every line written before close() resolves, whatever exits next
    },
  };
}

/** The set's arrival or change, with its warnings; nothing when a reload kept the same set. */
function logPolicies(logger: Logger, runtime: Runtime, previous: Runtime | undefined): void {
  const policies = runtime.policies;
  if (policies === undefined) {
    if (previous?.policies !== undefined) logger.warn('policies section removed: no policy stage; routes are decided by authentication and device checks only');
    return;
  }
  if (previous?.policies?.evaluator === policies.evaluator) return;
  const set = policies.evaluator.set;
  logger.info({ policySet: set.hash, policies: set.policies.length, dir: policies.dir }, previous === undefined ? 'policies loaded' : 'policies reloaded');
  warnPolicies(logger, policies.warnings);
}

function warnPolicies(logger: Logger, warnings: readonly ConfigIssue[]): void {
  if (warnings.length > 0) logger.warn({ warnings: warnings.map(formatIssue) }, 'policy conditions to review');
}
