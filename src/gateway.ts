// A running gateway: data plane + admin plane around one swappable Runtime, with reload
// (build aside, swap, keep the old one on failure) and graceful drain. Used by `ztgw serve`,
// the demo and the tests alike.
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import type { DestinationStream, Logger } from 'pino';
import { compileRuntime, type RuntimeHolder } from './config/compile.ts';
import { loadConfigFile } from './config/load.ts';
import type { Config } from './config/schema.ts';
import { buildAdminPlane } from './observability/admin.ts';
import { loadAdminCredential } from './observability/admin-token.ts';
import { createLoggers } from './observability/logging.ts';
import { createMetrics, type GatewayMetrics } from './observability/metrics.ts';
import { buildDataPlane } from './server.ts';
import { createServices, type Services } from './services.ts';

export type ConfigSource = { file: string; env?: NodeJS.ProcessEnv } | { config: Config; dir: string };

export interface GatewayOptions {
  readonly source: ConfigSource;
  /** Where logs go; stdout by default. */
  readonly logDestination?: DestinationStream;
  readonly now?: () => number;
}

export interface Gateway {
  readonly url: string;
  readonly adminUrl: string;
  readonly holder: RuntimeHolder;
  readonly services: Services;
  readonly metrics: GatewayMetrics;
  readonly logger: Logger;
  /** Re-reads the config source; on failure the running config stays and the error is returned. */
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
  const { logger, access, decisions } = createLoggers(
    initial.config.server.logLevel,
    opts.logDestination,
    decisionFile === undefined ? undefined : resolve(initial.dir, decisionFile),
  );
  const metrics = createMetrics();
  const services = await createServices(initial.config, initial.dir, logger, metrics);
  const compile = (next: { config: Config; dir: string }) =>
    compileRuntime(next.config, { configDir: next.dir, services, decisionLog: decisions, logger, metrics, now: opts.now });
  let holder: RuntimeHolder;
  try {
    holder = { current: await compile(initial) };
  } catch (err) {
    await services.close();
    throw err;
  }
  const server = holder.current.config.server;
  let draining = false;
  let lastReloadError: string | undefined;
  const isDraining = () => draining;

  const data = buildDataPlane({ holder, logger, accessLogger: access, metrics, isDraining, configDir: initial.dir });
  const admin = buildAdminPlane({ holder, services, logger, metrics, isDraining, lastReloadError: () => lastReloadError, credential: adminCredential });
  try {
    await data.listen({ host: server.listen.host, port: server.listen.port });
    await admin.listen({ host: server.admin.host, port: server.admin.port });
  } catch (err) {
    await data.close();
    await services.close();
    throw err;
  }
  const url = urlOf(data.server.address(), server.tls !== undefined);
  const adminUrl = urlOf(admin.server.address());
  logger.info({ url, adminUrl, config: holder.current.version, routes: holder.current.routes.length }, 'gateway listening');

  return {
    url,
    adminUrl,
    holder,
    services,
    metrics,
    logger,
    async reload() {
      try {
        services.policies?.reload();
        holder.current = await compile(loadSource(opts.source));
        lastReloadError = undefined;
        metrics.configReloads.inc({ result: 'ok' });
        logger.info({ config: holder.current.version }, 'config reloaded');
        return undefined;
      } catch (err) {
        lastReloadError = (err as Error).message;
        metrics.configReloads.inc({ result: 'failed' });
        logger.error({ err }, 'config reload failed; keeping the running config');
        return err as Error;
      }
    },
    async close() {
      draining = true;
      const deadline = holder.current.config.server.timeouts.shutdownMs;
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<'expired'>((resolve) => {
        timer = setTimeout(() => resolve('expired'), deadline);
      });
      // Fastify's close waits for in-flight requests and closes idle keep-alive sockets.
      const outcome = await Promise.race([data.close().then(() => 'drained' as const), expired]);
      clearTimeout(timer);
      if (outcome === 'expired') {
        logger.warn({ deadlineMs: deadline }, 'shutdown deadline passed; closing remaining connections');
        data.server.closeAllConnections();
      }
      await admin.close();
      await services.close();
      logger.info({ outcome }, 'gateway stopped');
      logger.flush();
      decisions.flush();
    },
  };
}
