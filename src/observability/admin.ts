// The admin plane: a separate listener for operators and their tooling, never for employees.
import { PassThrough } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { Services } from '../services.ts';
import { checkReadiness } from './readiness.ts';
import { cpuProfile, heapSnapshot, MAX_PROFILE_SECONDS } from './profile.ts';

export interface AdminPlaneOptions {
  readonly holder: RuntimeHolder;
  readonly services: Pick<Services, 'redis' | 'policies'>;
  readonly logger: Logger;
  readonly metrics: GatewayMetrics;
  readonly isDraining: () => boolean;
  /** Extra readiness details, e.g. the last failed reload. */
  readonly lastReloadError?: () => string | undefined;
}

export function buildAdminPlane(opts: AdminPlaneOptions): FastifyInstance {
  const app = Fastify({ loggerInstance: opts.logger.child({ plane: 'admin' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });

  const alive = async () => ({ status: 'ok' });
  app.get('/healthz', alive);
  app.get('/health', alive);

  app.get('/readyz', async (_request, reply) => {
    const readiness = await checkReadiness(opts.holder.current, opts.isDraining(), opts.services.redis, opts.services.policies);
    const lastReloadError = opts.lastReloadError?.();
    return reply.code(readiness.ready ? 200 : 503).send({
      status: readiness.ready ? 'ready' : 'not ready',
      config: opts.holder.current.version,
      checks: readiness.checks,
      ...(lastReloadError ? { lastReloadError } : {}),
    });
  });

  app.get('/.well-known/zt-jwks.json', async () => opts.holder.current.assertions.jwks);

  app.get('/metrics', async (_request, reply) => {
    const body = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(body);
  });

  // Profiling pauses nothing but costs CPU while it samples; off unless the config enables it.
  if (opts.holder.current.config.server.profiling) {
    app.get<{ Querystring: { seconds?: string } }>('/debug/profile/cpu', async (request, reply) => {
      const seconds = Number(request.query.seconds ?? '10');
      if (!Number.isFinite(seconds) || seconds <= 0 || seconds > MAX_PROFILE_SECONDS) {
        return reply.code(400).send({ error: `seconds must be in (0, ${MAX_PROFILE_SECONDS}]` });
      }
      const profile = await cpuProfile(seconds);
      return reply
        .header('content-disposition', `attachment; filename="ztgw-${Date.now()}.cpuprofile"`)
        .type('application/json')
        .send(JSON.stringify(profile));
    });
    app.get('/debug/profile/heap', async (_request, reply) => {
      const out = new PassThrough();
      void heapSnapshot(out).catch((err) => out.destroy(err as Error));
      return reply
        .header('content-disposition', `attachment; filename="ztgw-${Date.now()}.heapsnapshot"`)
        .type('application/json')
        .send(out);
    });
  }
  return app;
}
