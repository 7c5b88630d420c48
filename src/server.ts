// Wires a compiled Runtime into Fastify: one catch-all handler runs the pipeline and
// forwards; one hook logs and counts. No config parsing, no stage logic, no response
// bodies written here — those live in config/, pipeline/ and observability/problem.ts.
import { Transform, type TransformCallback } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import replyFrom from '@fastify/reply-from';
import type { Logger } from 'pino';
import type { RuntimeHolder } from './config/compile.ts';
import type { ServerConfig } from './config/schema.ts';
import { readFileSync } from 'node:fs';
import type https from 'node:https';
import { resolve } from 'node:path';
import { newContext, requestIdFor, type RequestContext } from './pipeline/context.ts';
import { BadPathError, BadRequestError, PayloadTooLargeError, RouteNotFoundError, ShuttingDownError, ZtError } from './pipeline/errors.ts';
import { runPipeline } from './pipeline/run.ts';
import { toProblem } from './observability/problem.ts';
import type { GatewayMetrics } from './observability/metrics.ts';
import { forward } from './upstream/proxy.ts';
import { attachWebSocketProxy } from './upstream/websocket.ts';


export interface DataPlaneOptions {
  readonly holder: RuntimeHolder;
  readonly logger: Logger;
  /** Unredacted, for access lines built from fixed fields only. */
  readonly accessLogger: Logger;
  readonly metrics: GatewayMetrics;
  /** Set while draining for shutdown: new requests get 503 with Connection: close. */
  readonly isDraining: () => boolean;
  /** Where the TLS files named in the config are. */
  readonly configDir: string;
}

/**
 * TLS for the data plane. With a device CA, clients are asked for a certificate but not
 * refused at the handshake: a route decides (RFC 8705 binding checks the thumbprint against
 * the token), and a refusal is a readable 401 instead of a TLS alert.
 */
function httpsOptions(tls: ServerConfig['tls'], configDir: string): https.ServerOptions | undefined {
  if (tls === undefined) return undefined;
  const read = (file: string) => readFileSync(resolve(configDir, file));
  return {
    cert: read(tls.certFile),
    key: read(tls.keyFile),
    ...(tls.clientCaFile === undefined ? {} : { ca: read(tls.clientCaFile), requestCert: true, rejectUnauthorized: false }),
  };
}

interface RequestState {
  ctx: RequestContext;
  upstreamStartedAt: number;
  error: ZtError | undefined;
}

declare module 'fastify' {
  interface FastifyRequest {
    zt: RequestState | null;
  }
}

/** Counts body bytes of chunked uploads (no Content-Length to check up front) and stops at the limit. */
class BodyLimit extends Transform {
  #seen = 0;
  readonly #limit: number;
  constructor(limit: number) {
    super();
    this.#limit = limit;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#seen += chunk.length;
    if (this.#seen > this.#limit) done(new PayloadTooLargeError('chunked body over limit'));
    else done(null, chunk);
  }
}

function sendProblem(reply: FastifyReply, requestId: string, err: unknown): FastifyReply {
  const problem = toProblem(err, requestId);
  return reply.code(problem.status).headers(problem.headers).header('x-request-id', requestId).send(problem.body);
}

export function buildDataPlane(opts: DataPlaneOptions): FastifyInstance {
  const { holder, logger, metrics } = opts;
  const server = holder.current.config.server;
  const tls = httpsOptions(server.tls, opts.configDir);
  const app = Fastify({
    ...(tls === undefined ? {} : { https: tls }),
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }), // one access line per request, written below
    // Fastify makes a child logger per request (bindings, redaction setup): 4% of the request
    // path in a profile. Nothing here logs through request.log; lines carry reqId themselves.
    childLoggerFactory: (parent) => parent,
    requestIdHeader: false,
    genReqId: (raw) => requestIdFor(raw, holder.current.trust),
    return503OnClosing: false, // the handler answers with a problem document instead
    bodyLimit: server.limits.maxBodyBytes,
    requestTimeout: server.timeouts.requestMs,
    connectionTimeout: 0,
    keepAliveTimeout: server.timeouts.keepAliveMs,
    http: { maxHeaderSize: server.limits.maxHeaderBytes, headersTimeout: server.timeouts.headersMs },
    routerOptions: { ignoreTrailingSlash: false, ignoreDuplicateSlashes: false, maxParamLength: 1024 },
    // Malformed URLs rejected by the router itself still get a problem document.
    frameworkErrors: (err, request, reply) => {
      sendProblem(reply, request.id, new BadPathError('router rejected url', { cause: err }));
    },
  });
  app.decorateRequest('zt', null);
  app.register(replyFrom, { disableRequestLogging: true, undici: { connections: 128, keepAliveTimeout: 30_000 } });

  // Bodies are never parsed: they stream to the upstream as they arrive.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, payload, done) => {
    if (request.headers['content-length'] !== undefined) return done(null, payload);
    done(null, payload.pipe(new BodyLimit(holder.current.config.server.limits.maxBodyBytes)));
  });

  const hooks = {
    onUpstreamResponse(ctx: RequestContext, request: FastifyRequest) {
      const state = request.zt;
      if (state) metrics.upstreamDuration.series(ctx.route!.name).observe((performance.now() - state.upstreamStartedAt) / 1000);
    },
    onUpstreamError(ctx: RequestContext, error: ZtError, reply: FastifyReply) {
      // A body that overran the limit mid-stream surfaces as an upstream failure; say what it was.
      const cause = (error.cause as { cause?: unknown } | undefined)?.cause;
      const final = cause instanceof PayloadTooLargeError ? cause : error;
      metrics.upstreamErrors.inc({ route: ctx.route!.name, code: final.code });
      logger.warn({ reqId: ctx.id, route: ctx.route!.name, code: final.code, err: error.cause }, 'upstream error');
      const state = reply.request.zt;
      if (state) state.error = final;
      sendProblem(reply, ctx.id, final);
    },
  };

  // Not async, and returns nothing: Fastify then neither wraps a promise nor awaits the
  // reply's thenable, and a cached-token request runs the pipeline without a microtask hop.
  function handle(request: FastifyRequest, reply: FastifyReply): void {
    const runtime = holder.current;
    const ctx = newContext(request.raw, request.id, false);
    const state: RequestState = { ctx, upstreamStartedAt: 0, error: undefined };
    request.zt = state;
    const refuse = (err: unknown): void => {
      state.error = err instanceof ZtError ? err : undefined;
      if (!(err instanceof ZtError)) logger.error({ reqId: ctx.id, err }, 'pipeline failed');
      sendProblem(reply, ctx.id, err);
    };
    const proceed = (): void => {
      state.upstreamStartedAt = performance.now();
      try {
        forward(reply, ctx, runtime.forwarding, hooks);
      } catch (err) {
        refuse(err); // reply-from refuses some targets synchronously; never an unhandled rejection
      }
    };
    let pending: void | Promise<void>;
    try {
      if (opts.isDraining()) throw new ShuttingDownError('draining');
      pending = runPipeline(runtime.stages, ctx);
    } catch (err) {
      return refuse(err);
    }
    if (pending === undefined) return proceed();
    pending.then(proceed, refuse);
  }

  // The gateway's own public keys, for upstreams verifying the assertion (also on the admin plane).
  app.get('/.well-known/zt-jwks.json', async (_request, reply) =>
    reply.header('cache-control', 'public, max-age=300').send(holder.current.assertions.jwks),
  );
  app.route({ method: ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'], url: '*', handler: handle });
  app.setNotFoundHandler((request, reply) => sendProblem(reply, request.id, new RouteNotFoundError('method not routed')));
  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const mapped =
      err instanceof ZtError
        ? err
        : err.statusCode === 413
          ? new PayloadTooLargeError('body over limit', { cause: err })
          : err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500
            ? new BadRequestError('framework rejected request', { cause: err })
            : err;
    if (!(mapped instanceof ZtError)) logger.error({ reqId: request.id, err }, 'unhandled error');
    if (request.zt) request.zt.error = mapped instanceof ZtError ? mapped : undefined;
    return sendProblem(reply, request.id, mapped);
  });

  app.addHook('onResponse', (request, reply, done) => {
    const state = request.zt;
    const ctx = state?.ctx;
    const route = ctx?.route?.name ?? 'none';
    const status = reply.statusCode;
    const error = state?.error;
    const decision = error === undefined ? (status >= 500 && !ctx?.route ? 'error' : 'allow') : status === 401 || status === 403 ? 'deny' : 'error';
    metrics.requests.inc(route, status, decision);
    metrics.requestDuration.series(route).observe(reply.elapsedTime / 1000);
    if (error !== undefined && status === 401) metrics.authFailures.inc({ reason: error.code });
    opts.accessLogger.info(
      {
        reqId: request.id,
        method: request.method,
        path: ctx?.path || request.url,
        route,
        status,
        ms: Math.round(reply.elapsedTime * 100) / 100,
        decision,
        sub: ctx?.identity?.subject,
        client: ctx?.clientIp || request.socket.remoteAddress,
        code: error?.code,
      },
      'access',
    );
    done();
  });

  attachWebSocketProxy(app, { holder, logger, isDraining: opts.isDraining });
  return app;
}
