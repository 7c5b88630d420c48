// The admin plane: a separate listener for operators and their tooling, never for employees
// and never for browsers. Every request first passes the Host and Origin rules (admin-guard.ts:
// no DNS-rebinding page or other web page reaches it); then every endpoint but the open ones
// needs the admin token (admin-token.ts). Its refusals are problem documents like the data
// plane's (problem.ts), with a request id.
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { finished } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import type { Services } from '../config/services.ts';
import { checkRateLimitStore, checkReadiness, type CheckResult } from './readiness.ts';
import { acquireProfiler, cpuProfile, MAX_PROFILE_SECONDS, parseProfileSeconds, writeHeapSnapshotFile } from './profile.ts';
import { toProblem } from '../observability/problem.ts';
import { createClientErrorHandler } from '../observability/client-error.ts';
import { compileAdminHosts, refuseAdminRequest, type AdminRefusalReason } from './admin-guard.ts';
import type { AdminCredential } from './admin-token.ts';
import {
  AdminTokenRequiredError,
  BadPathError,
  BadRequestError,
  PayloadTooLargeError,
  ProfileBusyError,
  RouteNotFoundError,
  ZtError,
} from '../core/errors.ts';

export interface AdminPlaneOptions {
  readonly holder: RuntimeHolder;
  readonly services: Pick<Services, 'redis' | 'rateLimits'>;
  readonly logger: Logger;
  readonly metrics: GatewayMetrics;
  readonly isDraining: () => boolean;
  /** Extra readiness details, e.g. the last failed reload. */
  readonly lastReloadError?: () => string | undefined;
  /** Config fields changed on disk that only a restart applies (config/reload.ts). */
  readonly restartRequired?: () => readonly string[];
  /** The admin token (admin-token.ts), when the config names one. Without it only the open endpoints exist. */
  readonly credential?: AdminCredential;
}

const CPU_NOTICE = 'CPU profiles add sampling load to every request on this instance while they run';
const HEAP_NOTICE = 'heap snapshots pause every request on this instance while taken and contain every secret in memory';

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

const attachment = (ext: string) => `attachment; filename="ztgw-${new Date().toISOString().replaceAll(':', '-')}.${ext}"`;

export function buildAdminPlane(opts: AdminPlaneOptions): FastifyInstance {
  const logger = opts.logger.child({ plane: 'admin' });
  const { server } = opts.holder.current.config;
  const allowedHosts = compileAdminHosts(server.admin.hosts);
  const credential = opts.credential;
  // Answered without the token. Everything else registered here needs it (fail closed: a new
  // endpoint is protected unless added to this list).
  const open = new Set(['/healthz', '/health', '/readyz', '/.well-known/zt-jwks.json']);
  if (!server.admin.metricsRequireToken) open.add('/metrics');

  const refuse = (request: FastifyRequest, reply: FastifyReply, reason: AdminRefusalReason | 'token', err: ZtError) => {
    opts.metrics.adminRefusals.inc({ reason });
    // Never the Authorization header; Host and Origin cut short, as they are the caller's words.
    logger.warn(
      {
        reqId: request.id,
        reason,
        code: err.code,
        method: request.method,
        // The path only: a query may carry a token someone put in the wrong place.
        path: request.url.split('?', 1)[0]!.slice(0, 200),
        remoteAddress: request.raw.socket.remoteAddress,
        host: request.headers.host?.slice(0, 200),
        origin: request.headers.origin?.slice(0, 200),
      },
      'admin request refused',
    );
    return sendProblem(reply, err);
  };
  const guard = (request: FastifyRequest) =>
    refuseAdminRequest(allowedHosts, {
      headers: request.headers,
      rawHeaders: request.raw.rawHeaders,
      httpVersion: request.raw.httpVersion,
      localAddress: request.raw.socket.localAddress,
    });

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    // Node answers an HTTP/1.1 request without Host with a bare 400 of its own; the guard
    // refuses it with a problem document like every other admin refusal.
    http: { requireHostHeader: false },
    frameworkErrors: (err, request, reply) => {
      const refusal = guard(request);
      if (refusal !== undefined) return refuse(request, reply, refusal.reason, refusal.error);
      return sendProblem(reply, new BadPathError('router rejected url', { cause: err }));
    },
    clientErrorHandler: createClientErrorHandler({ onError: (err, reqId) => logger.debug({ reqId, err }, 'client error') }),
  });
  // Order: Host and Origin for every request (unknown paths too), then the token for every
  // endpoint that exists and is not open. An unknown path without a token is a 404.
  app.addHook('onRequest', async (request, reply) => {
    const refusal = guard(request);
    if (refusal !== undefined) return refuse(request, reply, refusal.reason, refusal.error);
    if (request.is404 || open.has(request.routeOptions.url ?? '')) return;
    if (credential === undefined || !credential.accepts(request.headers.authorization)) {
      return refuse(request, reply, 'token', new AdminTokenRequiredError('admin token missing or wrong'));
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
    const lastReloadError = opts.lastReloadError?.();
    const readiness = await checkReadiness(opts.holder.current, opts.isDraining(), opts.services.redis, lastReloadError);
    (readiness.checks as CheckResult[]).push(checkRateLimitStore(opts.services.rateLimits));
    const restartRequired = opts.restartRequired?.() ?? [];
    return reply.code(readiness.ready ? 200 : 503).send({
      status: readiness.ready ? 'ready' : 'not ready',
      config: opts.holder.current.version,
      checks: readiness.checks,
      ...(lastReloadError ? { lastReloadError } : {}),
      ...(restartRequired.length > 0 ? { restartRequired } : {}),
    });
  });

  // Open on purpose: these are the public halves of the assertion signing keys, which every
  // upstream fetches to verify the identity assertions it receives. Nothing in them is secret,
  // and requiring the admin token would hand that token to every upstream.
  app.get('/.well-known/zt-jwks.json', async () => opts.holder.current.assertions.jwks);

  app.get('/metrics', async (_request, reply) => {
    const body = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(body);
  });

  // Profiling exists only with a token (admin-token.ts refuses profiling: true without one at
  // start; the check here keeps it so should that ever change). A heap snapshot holds every
  // secret in the process: issuer HMAC secrets, the DPoP nonce secret, assertion signing keys,
  // cached tokens and assertions.
  if (server.profiling && credential !== undefined) {
    // No HEAD twins: a HEAD would take the profile only to throw it away.
    app.get<{ Querystring: { seconds?: unknown } }>('/debug/profile/cpu', { exposeHeadRoute: false }, async (request, reply) => {
      const seconds = parseProfileSeconds(request.query.seconds);
      if (seconds === undefined) throw new BadRequestError(`seconds must be a whole number from 1 to ${MAX_PROFILE_SECONDS}`);
      const release = acquireProfiler();
      if (release === undefined) throw new ProfileBusyError('a profile or heap snapshot is running');
      // A client that leaves ends the sampling (and frees the slot) at once, not `seconds` later.
      const left = new AbortController();
      const onClose = () => left.abort();
      reply.raw.once('close', onClose);
      let profile: unknown;
      try {
        logger.info({ reqId: request.id, seconds, remoteAddress: request.raw.socket.remoteAddress }, 'cpu profile started');
        profile = await cpuProfile(seconds, left.signal);
      } finally {
        reply.raw.off('close', onClose);
        release();
      }
      return reply
        .header('content-disposition', attachment('cpuprofile'))
        .header('cache-control', 'no-store')
        .header('x-ztgw-notice', CPU_NOTICE)
        .type('application/json')
        .send(JSON.stringify(profile));
    });

    app.get('/debug/profile/heap', { exposeHeadRoute: false }, async (request, reply) => {
      const release = acquireProfiler();
      if (release === undefined) throw new ProfileBusyError('a profile or heap snapshot is running');
      let snapshot: Awaited<ReturnType<typeof writeHeapSnapshotFile>>;
      try {
        snapshot = await writeHeapSnapshotFile();
      } catch (err) {
        release();
        throw err;
      }
      // Finished, failed or abandoned by the client: the file and its directory go, then the slot frees.
      const body = createReadStream(snapshot.file);
      finished(reply.raw, () => {
        body.destroy();
        snapshot
          .remove()
          .catch((err: unknown) => logger.error({ reqId: request.id, err, dir: snapshot.dir }, 'could not remove heap snapshot'))
          .finally(release);
      });
      const { size } = await stat(snapshot.file).catch(() => ({ size: undefined }));
      const stallMs = Math.round(snapshot.stallMs);
      // warn: a snapshot is a copy of every secret in memory leaving the process; keep a trace of who took it.
      logger.warn({ reqId: request.id, stallMs, bytes: size, dir: snapshot.dir, remoteAddress: request.raw.socket.remoteAddress }, 'heap snapshot taken; the data plane stalled while it was written');
      reply
        .header('content-disposition', attachment('heapsnapshot'))
        .header('cache-control', 'no-store')
        .header('x-ztgw-data-plane-stall-ms', String(stallMs))
        .header('x-ztgw-notice', HEAP_NOTICE)
        .type('application/json');
      if (size !== undefined) reply.header('content-length', size);
      return reply.send(body);
    });
  }
  return app;
}
