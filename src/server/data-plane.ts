// Wires a compiled Runtime into Fastify: one catch-all handler runs the pipeline and
// forwards; one hook logs and counts. No config parsing, no stage logic, no response
// bodies written here — those live in config/, pipeline/ and observability/problem.ts.
import { Transform, type TransformCallback } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import replyFrom from '@fastify/reply-from';
import type { Logger } from 'pino';
import type { RuntimeHolder } from '../config/compile.ts';
import type { ServerConfig } from '../config/schema.ts';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import type https from 'node:https';
import { resolve } from 'node:path';
import { newContext, requestIdFor, type RequestContext } from '../pipeline/context.ts';
import { BadPathError, BadRequestError, ClientClosedRequestError, InternalError, MethodNotAllowedError, PayloadTooLargeError, RequestTimeoutError, ShuttingDownError, UpstreamErrorResponse, ZtError } from '../core/errors.ts';
import { runPipeline } from '../pipeline/run.ts';
import { toProblem } from '../observability/problem.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { createAccessRecorder, type AccessLineSink } from '../observability/access-log.ts';
import { CLIENT_ERROR, createClientErrorHandler, MAX_HEADER_FIELDS, REQUEST_ID } from '../observability/client-error.ts';
import { CLIENT_GONE, createUpstreamDispatcher, forward } from '../pipeline/proxy.ts';
import { attachUpgradeHandling, isWebSocketUpgrade } from './websocket.ts';
import { refuseClientRenegotiation } from './tls-renegotiation.ts';
import { callOptionsFor, type GuardEndpoint, type UpstreamCall } from '../pipeline/upstream-guard.ts';
import { createStallWatch, sweepIntervalFor } from './send-idle.ts';
import { observeRiskResponse } from '../pipeline/risk.ts';
import type { RuntimeRisk } from '../config/risk.ts';
import type { TraceEvent } from '../risk/features.ts';


export interface DataPlaneOptions {
  readonly holder: RuntimeHolder;
  readonly logger: Logger;
  /** Where access lines go (logging.ts: the same stream as the other logs). */
  readonly accessLogger: AccessLineSink;
  readonly metrics: GatewayMetrics;
  /** Set while draining for shutdown: new requests get 503 with Connection: close. */
  readonly isDraining: () => boolean;
  /**
   * Aborted when the shutdown deadline passes, just before the remaining connections are cut:
   * a request cut then is logged as the gateway's doing (503 ERR_SHUTTING_DOWN), not as a
   * client that left (499); open WebSocket sessions are ended, each with its closing line.
   */
  readonly drainDeadline?: AbortSignal;
  /**
   * Called for every request folded into the risk model's histories, when its response ends:
   * a trace line and its score (tests compare them with `ztgw model score`; a debugging tap).
   */
  readonly onRiskTrace?: (line: RiskTraceLine) => void;
  readonly now?: () => number;
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
    // Node's default, stated so that --tls-min-v1.0 (or NODE_OPTIONS) cannot lower it here.
    minVersion: 'TLSv1.2',
    ...(tls.clientCaFile === undefined ? {} : { ca: read(tls.clientCaFile), requestCert: true, rejectUnauthorized: false }),
  };
}

interface RequestState {
  ctx: RequestContext;
  upstreamStartedAt: number;
  error: ZtError | undefined;
  /** The client closed its connection before its answer was complete; its access line is written. */
  clientGone: boolean;
  /** The gateway ended the response: its client stopped reading for sendIdleMs (server/send-idle.ts). */
  stalled: boolean;
  /** The risk part of the Runtime the request started with: its response is folded into the same histories. */
  risk: RuntimeRisk | undefined;
  /** socket.bytesWritten when the request arrived: the response's bytes when it has no Content-Length. */
  bytesAtStart: number;
}

/** One request as the risk model saw it, in the `ztgw model score` trace format, with the score it got. */
export type RiskTraceLine = TraceEvent & { readonly score: number | undefined };

declare module 'fastify' {
  interface FastifyRequest {
    zt: RequestState | null;
  }
}

/**
 * Between the client's body and the upstream request: counts the bytes of chunked uploads (no
 * Content-Length to check up front) and stops at the limit, and fails a body from which
 * nothing arrives for bodyIdleMs (server.timeouts), so that a stalled upload gives its
 * upstream request, connection and slots back (408) instead of holding them until the whole
 * request's requestMs. The clock runs only while the upstream side is waiting for bytes: time
 * the gateway or the upstream takes to read what came is not the client's.
 */
class BodyGuard extends Transform {
  #seen = 0;
  readonly #limit: number;
  readonly #idleMs: number;
  #timer: NodeJS.Timeout | undefined;
  constructor(limit: number, idleMs: number) {
    super();
    this.#limit = limit;
    this.#idleMs = idleMs;
  }
  override _read(size: number): void {
    // The upstream request reads: from now on the client is expected to send.
    if (this.#timer === undefined && !this.destroyed) {
      this.#timer = setTimeout(() => this.#idle(), this.#idleMs);
      this.#timer.unref();
    }
    super._read(size);
  }
  #idle(): void {
    // Bytes are waiting to be read: the reader is slow, not the client.
    if (this.readableLength > 0 || this.writableLength > 0) return void this.#timer?.refresh();
    this.destroy(new RequestTimeoutError(`no request body bytes for ${this.#idleMs} ms`));
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#timer?.refresh();
    this.#seen += chunk.length;
    if (this.#seen > this.#limit) done(new PayloadTooLargeError('chunked body over limit'));
    else done(null, chunk);
  }
  override _flush(done: TransformCallback): void {
    clearTimeout(this.#timer);
    done();
  }
  override _destroy(error: Error | null, done: (error?: Error | null) => void): void {
    clearTimeout(this.#timer);
    done(error);
  }
}

// Marks on Node's objects, set only on the rare paths that need them, read as a property miss
// on every request (cheaper than a WeakMap lookup on the hot path).
/** On a socket: the request whose Upgrade (not WebSocket) was ignored; the connection closes after it. */
const DECLINED_UPGRADE = Symbol('ztgw.declinedUpgrade');
/** On a response: the client sent Expect: 100-continue and waits for the invitation to send its body. */
const EXPECTS_CONTINUE = Symbol('ztgw.expectsContinue');
/** On a response: the refusal it carries, for its access line (the pipeline's, notFound's, the error handler's). */
const REFUSAL = Symbol('ztgw.refusal');
type Marked<T> = T & { [DECLINED_UPGRADE]?: http.IncomingMessage; [EXPECTS_CONTINUE]?: boolean; [CLIENT_ERROR]?: ZtError; [REFUSAL]?: ZtError };

/**
 * A request that carries Upgrade but is not relayed as a WebSocket is served as plain HTTP
 * (RFC 9110 §7.8 lets a server ignore Upgrade), and its connection ends with this answer: the
 * client may already be sending another protocol (h2c's preface, TLS) behind it, and a
 * request pipelined behind it is refused in handle(), never forwarded. llhttp flags an upgrade
 * only with Connection: upgrade too (shouldUpgradeCallback below); `Upgrade: h2c` alone, or
 * with the Connection token hidden, arrives here as an ordinary request.
 */
function declineUpgrade(raw: http.IncomingMessage, res: http.ServerResponse): http.IncomingMessage {
  res.shouldKeepAlive = false;
  const socket = raw.socket as Marked<typeof raw.socket>;
  return (socket[DECLINED_UPGRADE] ??= raw);
}

function sendProblem(reply: FastifyReply, requestId: string, err: unknown): FastifyReply {
  const zt = err instanceof ZtError ? err : new InternalError('unexpected error', { cause: err });
  const problem = toProblem(zt, requestId);
  const raw = reply.raw as Marked<http.ServerResponse>;
  // Every refusal is logged and counted as one, whichever handler wrote it (never as "allow").
  raw[REFUSAL] = zt;
  // A client still waiting for 100 Continue never sent its body: the connection cannot be reused.
  if (raw[EXPECTS_CONTINUE] === true) raw.shouldKeepAlive = false;
  if (reply.request.headers.upgrade !== undefined) declineUpgrade(reply.request.raw, raw);
  return reply.code(problem.status).headers(problem.headers).header('x-request-id', requestId).send(problem.body);
}

/**
 * Node's http options, for plain and TLS listeners alike (Fastify hands `http` only to
 * http.createServer, so with TLS they must travel inside `https`).
 */
function listenerOptions(server: ServerConfig): http.ServerOptions {
  const { headersMs, requestMs } = server.timeouts;
  return {
    maxHeaderSize: server.limits.maxHeaderBytes,
    headersTimeout: headersMs,
    // Node checks the two timeouts on this interval (30 s by default, so a 10 s head timeout
    // could take 40 s); a quarter of the shorter keeps the slack under 25%.
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(Math.min(headersMs, requestMs) / 4))),
    // Node answers a missing Host itself with a bare 400; hygiene refuses it with a problem document.
    requireHostHeader: false,
    // Only a WebSocket upgrade becomes an 'upgrade' event (server/websocket.ts decides the
    // rest); any other Upgrade is served as a plain request on a connection that then closes,
    // so nothing the client sends after it is read as another protocol or another request.
    shouldUpgradeCallback: (req: http.IncomingMessage) => {
      if (isWebSocketUpgrade(req)) return true;
      (req.socket as Marked<typeof req.socket>)[DECLINED_UPGRADE] ??= req;
      return false;
    },
  };
}

export function buildDataPlane(opts: DataPlaneOptions): FastifyInstance {
  const { holder, logger, metrics } = opts;
  const server = holder.current.config.server;
  const tls = httpsOptions(server.tls, opts.configDir);
  const listener = listenerOptions(server);
  const record = createAccessRecorder(opts.accessLogger, metrics);
  const app = Fastify({
    ...(tls === undefined ? {} : { https: { ...tls, ...listener } }),
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }), // one access line per request, written below
    // Fastify makes a child logger per request (bindings, redaction setup): 4% of the request
    // path in a profile. Nothing here logs through request.log; lines carry reqId themselves.
    childLoggerFactory: (parent) => parent,
    requestIdHeader: false,
    genReqId: (raw) => ((raw as Marked<typeof raw> & { [REQUEST_ID]?: string })[REQUEST_ID] = requestIdFor(raw, holder.current.trust)),
    return503OnClosing: false, // the handler answers with a problem document instead
    bodyLimit: server.limits.maxBodyBytes,
    requestTimeout: server.timeouts.requestMs,
    connectionTimeout: 0,
    keepAliveTimeout: server.timeouts.keepAliveMs,
    http: listener,
    routerOptions: { ignoreTrailingSlash: false, ignoreDuplicateSlashes: false, maxParamLength: 1024 },
    // Malformed URLs rejected by the router itself still get a problem document, and an
    // access line: this path runs none of the hooks below.
    frameworkErrors: (err, request, reply) => {
      const refusal = new BadPathError('router rejected url', { cause: err });
      sendProblem(reply, request.id, refusal);
      record({
        reqId: request.id,
        method: request.method,
        path: request.raw.url,
        route: undefined,
        status: reply.statusCode,
        ms: reply.elapsedTime,
        error: refusal,
        sub: undefined,
        client: request.socket.remoteAddress,
      });
    },
    // Requests Node's parser refuses before any route runs: a problem document, an access line.
    clientErrorHandler: createClientErrorHandler({
      onError: (err, reqId) => logger.debug({ reqId, err }, 'client error'),
      onRefused: (reqId, error, status, client) =>
        record({ reqId, method: undefined, path: undefined, route: undefined, status, ms: undefined, error, sub: undefined, client }),
    }),
  });
  app.decorateRequest('zt', null);
  app.server.maxHeadersCount = MAX_HEADER_FIELDS;
  const upstreams = createUpstreamDispatcher();
  app.register(replyFrom, { disableRequestLogging: true, undici: upstreams as never });
  app.addHook('onClose', async () => upstreams.destroy());
  const stalls = createStallWatch(sweepIntervalFor(server.timeouts.sendIdleMs));
  app.addHook('onClose', async () => stalls.close());
  const now = opts.now ?? Date.now;

  /** The response side of the risk features (pipeline/risk.ts), once the response has ended. */
  function feedRisk(state: RequestState, reply: FastifyReply, status: number): void {
    const risk = state.risk;
    if (risk === undefined) return;
    const length = Number(reply.getHeader('content-length'));
    const bytes = Number.isFinite(length) && length >= 0 ? length : Math.max(0, (reply.raw.socket?.bytesWritten ?? state.bytesAtStart) - state.bytesAtStart);
    const event = observeRiskResponse(risk.extractor, state.ctx, status, bytes, now);
    if (event !== undefined && opts.onRiskTrace !== undefined) opts.onRiskTrace({ ...event, score: state.ctx.risk?.score });
  }

  // Bodies are never parsed: they stream to the upstream as they arrive.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, payload, done) => {
    const { limits, timeouts } = holder.current.config.server;
    // A Content-Length body was checked against the limit up front (Fastify's bodyLimit).
    const limiter = new BodyGuard(request.headers['content-length'] !== undefined ? Infinity : limits.maxBodyBytes, timeouts.bodyIdleMs);
    // pipe() carries data, not failure: a client that leaves mid-body must fail the limiter too,
    // so undici sees its body fail and aborts the upstream request instead of waiting, with an
    // upstream connection held, for the rest of a body that never comes. Only this way round
    // (not pipeline()): the limiter's own 413 must not destroy the client's socket before the
    // 413 is written.
    payload.once('close', () => {
      if (!payload.readableEnded) limiter.destroy(new ClientClosedRequestError('client closed mid-body'));
    });
    done(null, payload.pipe(limiter));
  });

  const hooks = {
    onUpstreamResponse(ctx: RequestContext, request: FastifyRequest) {
      const state = request.zt;
      if (state) metrics.upstreamDuration.series(ctx.route!.name).observe((performance.now() - state.upstreamStartedAt) / 1000);
    },
    onUpstreamError(ctx: RequestContext, error: ZtError, reply: FastifyReply) {
      // The client left, and its leaving aborted the upstream request (or broke the body it
      // was streaming): not the upstream's failure, and nobody to answer. Its access line is
      // written by the close listener in handle(). Likewise when the parser already answered
      // (a body timeout's 408 cut the body off): that answer stands, and is the request's line.
      // Nor when the shutdown deadline cut it (the dispatcher is destroyed next): logged as cut.
      if (reply.request.zt?.clientGone === true || reply.raw.destroyed || reply.raw.headersSent || opts.drainDeadline?.aborted === true) return;
      // A body that overran the limit or stalled mid-stream surfaces as an upstream failure; say what it was.
      const cause = (error.cause as { cause?: unknown } | undefined)?.cause;
      const final = cause instanceof PayloadTooLargeError || cause instanceof RequestTimeoutError ? cause : error;
      // The rest of a stalled body may still come: this connection cannot carry another request.
      if (final instanceof RequestTimeoutError) reply.raw.shouldKeepAlive = false;
      metrics.upstreamErrors.inc({ route: ctx.route!.name, code: final.code });
      logger.warn({ reqId: ctx.id, route: ctx.route!.name, code: final.code, err: error.cause }, 'upstream error');
      const state = reply.request.zt;
      if (state) state.error = final;
      sendProblem(reply, ctx.id, final);
    },
    onRetry(ctx: RequestContext, failed: GuardEndpoint, error: ZtError, next: GuardEndpoint) {
      logger.info({ reqId: ctx.id, route: ctx.route!.name, upstream: failed.upstream, endpoint: failed.name, code: error.code, err: error.cause, retryOn: next.name }, 'upstream attempt failed; retrying');
    },
    onUpstreamErrorResponse(ctx: RequestContext, error: UpstreamErrorResponse, reply: FastifyReply) {
      // The upstream's status, never its body: that is what was kept from the client.
      logger.warn({ reqId: ctx.id, route: ctx.route!.name, status: error.status }, 'upstream error response replaced');
      const state = reply.request.zt;
      if (state) state.error = error;
      sendProblem(reply, ctx.id, error);
    },
  };

  // Not async, and returns nothing: Fastify then neither wraps a promise nor awaits the
  // reply's thenable, and a cached-token request runs the pipeline without a microtask hop.
  function handle(request: FastifyRequest, reply: FastifyReply): void {
    const runtime = holder.current;
    const ctx = newContext(request.raw, request.id, false);
    const state: RequestState = {
      ctx,
      upstreamStartedAt: 0,
      error: undefined,
      clientGone: false,
      stalled: false,
      risk: runtime.risk,
      bytesAtStart: request.raw.socket?.bytesWritten ?? 0,
    };
    request.zt = state;
    const raw = reply.raw as Marked<FastifyReply['raw']>;
    const refuse = (err: unknown): void => {
      if (state.clientGone) return;
      state.error = err instanceof ZtError ? err : undefined;
      if (!(err instanceof ZtError)) logger.error({ reqId: ctx.id, err }, 'pipeline failed');
      sendProblem(reply, ctx.id, err);
    };
    // A client that closes its connection before its answer is complete (mid-body, while the
    // pipeline or the upstream works, mid-response) gets one access line with 499, as nginx
    // logs it, and the upstream request is aborted at once (pipeline/proxy.ts CLIENT_GONE).
    raw.once('close', () => {
      if (raw.writableFinished || state.clientGone) return;
      state.clientGone = true;
      raw.emit(CLIENT_GONE);
      // Or the gateway cut it, at the shutdown deadline: a 5xx of its own, whatever was sent;
      // or because its client stopped reading (sendIdleMs): the client's slowness, a 408.
      const cut = opts.drainDeadline?.aborted === true;
      const status = cut ? 503 : state.stalled ? 408 : 499;
      feedRisk(state, reply, status);
      record({
        reqId: ctx.id,
        method: request.method,
        path: ctx.path || request.raw.url,
        route: ctx.route?.name,
        status,
        ms: reply.elapsedTime,
        error: cut
          ? new ShuttingDownError('cut at the shutdown deadline before the answer was complete')
          : state.stalled
            ? new RequestTimeoutError('the client stopped reading the response (server.timeouts.sendIdleMs)')
            : new ClientClosedRequestError('client closed the connection before the answer was complete'),
        sub: ctx.identity?.subject,
        client: ctx.clientIp || request.socket.remoteAddress,
      });
    });
    const declined =
      request.headers.upgrade === undefined ? (request.raw.socket as Marked<typeof request.raw.socket>)[DECLINED_UPGRADE] : declineUpgrade(request.raw, raw);
    if (declined !== undefined) {
      // After an ignored Upgrade the connection ends with this answer. A request the client
      // pipelined behind it is refused unseen by any upstream: it was sent to a connection the
      // client expected to speak another protocol by then.
      raw.shouldKeepAlive = false;
      if (declined !== request.raw) return refuse(new BadRequestError('request after an ignored upgrade'));
    }
    const proceed = (): void => {
      // The parser refused the rest of this request (a broken chunk, a body timeout) while the
      // pipeline ran: that refusal is the answer, and nothing is forwarded. Nor is anything
      // forwarded for a client that already left.
      if (raw[CLIENT_ERROR] !== undefined || state.clientGone) return;
      // The upstream's bulkhead and this principal's share, before the client is invited to
      // send a body; released when the response ends, however it ends ('close' comes after
      // 'finish' too, and after a destroy).
      let call: UpstreamCall;
      try {
        call = runtime.upstreamGuard.begin(callOptionsFor(ctx));
      } catch (err) {
        return refuse(err);
      }
      raw.once('close', call.end);
      state.upstreamStartedAt = performance.now();
      // RFC 9110 §10.1.1: the client is invited to send its body only now, after authn,
      // device and policy passed; a refused request never had its body read.
      if (raw[EXPECTS_CONTINUE] === true) {
        raw[EXPECTS_CONTINUE] = false;
        raw.writeContinue();
      }
      stalls.watch(raw, runtime.config.server.timeouts.sendIdleMs, () => {
        state.stalled = true;
        logger.warn({ reqId: ctx.id, route: ctx.route!.name, sendIdleMs: runtime.config.server.timeouts.sendIdleMs }, 'client stopped reading; response ended');
        raw.destroy();
      });
      try {
        forward(reply, ctx, runtime.forwarding, hooks, call);
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
  // Every path of the methods above reaches handle(); only another method gets here (TRACE,
  // PROPFIND, PURGE, …): 405 with Allow (RFC 9110 §15.5.6), never forwarded.
  app.setNotFoundHandler((request, reply) => sendProblem(reply, request.id, new MethodNotAllowedError(`method ${request.method} not routed`)));
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
    if (state?.clientGone === true) return done(); // logged as 499 when the client left
    const ctx = state?.ctx;
    const raw = reply.raw as Marked<FastifyReply['raw']>;
    if (state != null) feedRisk(state, reply, reply.statusCode);
    record({
      reqId: request.id,
      method: request.method,
      path: ctx?.path || request.raw.url,
      route: ctx?.route?.name,
      status: reply.statusCode,
      ms: reply.elapsedTime,
      error: state?.error ?? raw[CLIENT_ERROR] ?? raw[REFUSAL],
      sub: ctx?.identity?.subject,
      client: ctx?.clientIp || request.socket.remoteAddress,
    });
    done();
  });

  // Expect: 100-continue. Node would send 100 as soon as the head arrives, inviting an
  // unauthenticated client to upload; the handler sends it once the pipeline passed. Other
  // expectations are ignored (RFC 9110 §10.1.1 allows it): the header is not forwarded.
  app.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    (res as Marked<http.ServerResponse>)[EXPECTS_CONTINUE] = true;
    app.server.emit('request', req, res);
  });
  app.server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => app.server.emit('request', req, res));

  attachUpgradeHandling(app.server, { holder, logger, isDraining: opts.isDraining, record, metrics, drainDeadline: opts.drainDeadline });
  if (tls !== undefined) {
    refuseClientRenegotiation(app.server as https.Server, (socket) => {
      metrics.tlsRenegotiationsRefused.inc();
      logger.warn({ client: socket.remoteAddress }, 'tls renegotiation refused; connection closed');
    });
  }
  return app;
}
