// The admin plane: a separate listener for operators and their tooling, never for employees.
// Its refusals are problem documents like the data plane's (problem.ts), with a request id.
import { randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { Services } from '../services.ts';
import { checkReadiness } from './readiness.ts';
import { cpuProfile, heapSnapshot, MAX_PROFILE_SECONDS } from './profile.ts';
import { toProblem } from './problem.ts';
import { createClientErrorHandler } from './client-error.ts';
import { BadPathError, BadRequestError, PayloadTooLargeError, RouteNotFoundError, ZtError } from '../pipeline/errors.ts';

export interface AdminPlaneOptions {
  readonly holder: RuntimeHolder;
  readonly services: Pick<Services, 'redis' | 'policies'>;
  readonly logger: Logger;
  readonly metrics: GatewayMetrics;
  readonly isDraining: () => boolean;
  /** Extra readiness details, e.g. the last failed reload. */
  readonly lastReloadError?: () => string | undefined;
}

function sendProblem(reply: FastifyReply, err: unknown): FastifyReply {
  const problem = toProblem(err, reply.request.id);
  return reply.code(problem.status).headers(problem.headers).header('x-request-id', reply.request.id).send(problem.body);
}

/** Fastify's own errors (bad JSON-less bodies, oversized ones, unknown content types) onto the closed set. */
function mapFrameworkError(err: Error & { statusCode?: number }): unknown {
  if (err instanceof ZtError) return err;
  if (err.statusCode === 413) return new PayloadTooLargeError('body over limit', { cause: err });
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return new BadRequestError('framework rejected request', { cause: err });
  return err;
}

export function buildAdminPlane(opts: AdminPlaneOptions): FastifyInstance {
  const logger = opts.logger.child({ plane: 'admin' });
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    // Node answers an HTTP/1.1 request without Host with a bare 400 of its own; the hook below
    // refuses it with a problem document like every other admin refusal.
    http: { requireHostHeader: false },
    frameworkErrors: (err, _request, reply) => sendProblem(reply, new BadPathError('router rejected url', { cause: err })),
    clientErrorHandler: createClientErrorHandler({ onError: (err, reqId) => logger.debug({ reqId, err }, 'client error') }),
  });
  // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host.
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers.host === undefined && request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor >= 1) {
      return sendProblem(reply, new BadRequestError('missing Host'));
    }
  });
  app.setNotFoundHandler((_request, reply) => sendProblem(reply, new RouteNotFoundError('no admin endpoint')));
  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const mapped = mapFrameworkError(err);
    if (!(mapped instanceof ZtError)) logger.error({ reqId: request.id, err }, 'admin endpoint failed');
    return sendProblem(reply, mapped);
  });

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
        return sendProblem(reply, new BadRequestError(`seconds must be in (0, ${MAX_PROFILE_SECONDS}]`));
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
