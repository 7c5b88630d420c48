// Stage 8: forward to an endpoint of the request's upstream with @fastify/reply-from (undici
// pools per origin, bodies streamed both ways). The endpoint comes from the upstream guard
// (pipeline/upstream-guard.ts: best priority, breaker admitted), and what the upstream did goes
// back to it: a connection error or the route's timeout is a failure, a status is an answer
// (5xx a failure), a request that ended for the client's reasons is neither. A failed attempt
// of an idempotent request without a body may go once more, to another endpoint, within the
// retry budget; then the client sees only the last outcome. Upstream failures are translated,
// never leaked: timeout → 504, anything else without a response → 502 (fastify-reply-from
// lib/errors.js); and an upstream's own 5xx becomes the gateway's problem document unless the
// route passes error bodies (many internal APIs print stack traces and internal host names there).
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Agent, type Dispatcher } from 'undici';
import type { RequestContext } from './context.ts';
import { UpstreamErrorResponse, UpstreamTimeoutError, UpstreamUnreachableError, ZtError } from '../core/errors.ts';
import type { AttemptFailure, GuardEndpoint, UpstreamCall } from './upstream-guard.ts';
import { upstreamPathFor } from './route.ts';
import { clientResponseHeaders, upstreamRequestHeaders, type ForwardingPolicy } from './upstream-headers.ts';
import { errorResponseHeaders } from './response-headers.ts';

export interface ForwardHooks {
  /** Upstream response headers arrived (for the upstream latency histogram). */
  onUpstreamResponse(ctx: RequestContext, request: FastifyRequest): void;
  /** No response came; the error is already translated. */
  onUpstreamError(ctx: RequestContext, error: ZtError, reply: FastifyReply): void;
  /** The upstream answered 5xx and the route replaces error bodies: answer with this problem instead. */
  onUpstreamErrorResponse(ctx: RequestContext, error: UpstreamErrorResponse, reply: FastifyReply): void;
  /** An attempt failed and another goes to `next` (the client sees only the last outcome). */
  onRetry(ctx: RequestContext, failed: GuardEndpoint, error: ZtError, next: GuardEndpoint): void;
}

/** What reply-from hands its onResponse option (lib/request.js: undici's status, headers and body). */
interface UpstreamResponse {
  readonly statusCode: number;
  readonly headers: IncomingHttpHeaders;
  readonly stream: Readable;
}

// rewriteHeaders is called before the status is known to anyone but undici: the response's
// headers are chosen in onResponse instead, with the status, and reply-from copies nothing.
const NO_HEADERS: IncomingHttpHeaders = Object.freeze({}) as IncomingHttpHeaders;

/**
 * Past this many bytes an unwanted upstream body is not read to its end: the connection is
 * closed instead of kept for reuse. Most error pages are a few KiB; a huge one is not worth
 * reading only to keep a socket.
 */
const DISCARD_MAX_BYTES = 64 * 1024;
const ignore = (): void => {};

/** Reads an upstream body nobody will see to its end, so its connection returns to the pool; or drops the connection if it is long. */
function discard(body: Readable): void {
  let seen = 0;
  body.on('error', ignore); // nobody reads it: its failure (a 304's length mismatch, see respond) is nobody's concern
  body.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > DISCARD_MAX_BYTES) body.destroy();
  });
}

/** RFC 9110 §6.4.1: a 204 or 304, and any answer to HEAD, has no content whatever its headers say. */
function hasNoContent(status: number, method: string): boolean {
  return status === 204 || status === 304 || method === 'HEAD';
}

export function translateUpstreamError(error: { statusCode?: number; code?: string }): ZtError {
  if (error.statusCode === 504) return new UpstreamTimeoutError('upstream timed out', { cause: error });
  return new UpstreamUnreachableError('upstream failed', { cause: error });
}

/**
 * reply-from refuses any target whose decoded text contains `/..` or `../` (its own traversal
 * guard, lib/utils.js buildURL), so the legitimate names `...`, `..x` and `x..` became 500s.
 * Hygiene has already refused every real dot segment and every escaped dot, so the guard can
 * only misfire here: a tab between adjacent dots hides them from it, and the WHATWG URL parser
 * that builds the request line next removes every tab (URL Standard, basic URL parser step 3),
 * so the upstream receives the path unchanged (tested in test/e2e/attack-paths.test.ts).
 */
function replyFromTarget(path: string): string {
  return path.includes('..') ? path.replace(/\.(?=\.)/g, '.\t') : path;
}

/**
 * The upstream request is tied to the client's response: when the client leaves before its
 * answer is complete, server/data-plane.ts emits CLIENT_GONE on the response and undici aborts the
 * upstream request (while the body streams, while it waits for the head, or while the
 * response streams back), which frees the upstream connection at once. Without it, a client
 * that sends half a chunked body and leaves kept a connection to the upstream open until the
 * upstream's own timeout (minutes), so a few sockets could pin an upstream's pool.
 *
 * reply-from passes neither a signal nor any per-request option to undici; what it does pass
 * on is the headers object (copied with Object.assign, which keeps symbol keys, while undici
 * reads only string keys). So the response rides there under a symbol, and the dispatcher
 * below hands it to undici as the request's signal: undici accepts an EventEmitter that emits
 * 'abort' (undici lib/api/abort-signal.js), and a ServerResponse is one, so no
 * per-request AbortController is allocated.
 */
export const CLIENT_GONE = 'abort';
const CLIENT_RESPONSE = Symbol('ztgw.clientResponse');

type RequestOptions = Dispatcher.RequestOptions & { headers: Record<string | symbol, unknown> };

/** What reply-from accepts as its `undici` option (any object with request()), wrapping one Agent. */
export interface UpstreamDispatcher {
  request(opts: RequestOptions, callback: (err: Error | null, data: Dispatcher.ResponseData) => void): void;
  destroy(): Promise<void>;
}

export function createUpstreamDispatcher(): UpstreamDispatcher {
  // reply-from's own agent options (lib/request.js getUndiciOptions), except one: reply-from
  // turns upstream certificate checks off (tls.rejectUnauthorized: false), so anyone on the
  // path to an https upstream could read the assertion and answer in its place. Here the
  // upstream's certificate is verified (system CAs, plus NODE_EXTRA_CA_CERTS for a private CA).
  const agent = new Agent({ pipelining: 1, connections: 128, keepAliveTimeout: 30_000 });
  return {
    request(opts, callback) {
      // opts is reply-from's own per-request object (lib/request.js handleUndici): set, not copied.
      const client = opts.headers[CLIENT_RESPONSE] as ServerResponse | undefined;
      if (client !== undefined) opts.signal = client;
      agent.request(opts, callback);
    },
    destroy: () => agent.destroy(),
  };
}

/**
 * What a failed attempt says about the upstream. The client's own doing (it left, its body
 * broke, overran the limit or stalled: a ZtError of the data plane's in the cause chain) is
 * no evidence; the route's timeout to the response head (reply-from's 504) is a timeout;
 * anything else without a response (refused, reset, DNS) is a connection failure.
 */
export function failureOf(error: { statusCode?: number; cause?: unknown }, clientGone: boolean): AttemptFailure {
  if (clientGone) return 'cancelled';
  for (let e: unknown = error, depth = 0; e !== null && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof ZtError || (e as { code?: unknown }).code === 'UND_ERR_ABORTED') return 'cancelled';
  }
  return error.statusCode === 504 ? 'timeout' : 'connect';
}

/**
 * Sends the request to the endpoint the call chooses. Throws UpstreamUnavailableError (every
 * endpoint out; nothing was sent) for the caller to answer; later failures go to the hooks.
 */
export function forward(reply: FastifyReply, ctx: RequestContext, policy: ForwardingPolicy, hooks: ForwardHooks, call: UpstreamCall): FastifyReply {
  return send(reply, ctx, policy, hooks, call, call.first());
}

function send(reply: FastifyReply, ctx: RequestContext, policy: ForwardingPolicy, hooks: ForwardHooks, call: UpstreamCall, endpoint: GuardEndpoint): FastifyReply {
  const route = ctx.route!;
  ctx.upstreamOrigin = endpoint.origin;
  ctx.upstreamPath = upstreamPathFor(route, ctx.path, endpoint.basePath);
  return reply.from(endpoint.origin + replyFromTarget(ctx.upstreamPath), {
    timeout: route.timeoutMs,
    // reply-from retries GETs on 503 and on some socket errors by default; a gateway must
    // not multiply traffic to a struggling service behind the client's back.
    retryDelay: () => null,
    rewriteRequestHeaders: (_request, headers) => {
      const out = upstreamRequestHeaders(ctx, headers.host, policy);
      (out as Record<symbol, unknown>)[CLIENT_RESPONSE] = reply.raw;
      return out;
    },
    rewriteHeaders: (_headers, request) => {
      hooks.onUpstreamResponse(ctx, request as FastifyRequest);
      return NO_HEADERS;
    },
    onResponse: (request, _reply, response) => {
      const upstream = response as unknown as UpstreamResponse;
      call.responded(upstream.statusCode);
      respond(ctx, request.method, reply, upstream, hooks);
    },
    onError: (errReply, { error }) => {
      const failure = error as { statusCode?: number; cause?: unknown };
      const translated = translateUpstreamError(failure);
      const kind = failureOf(failure, reply.raw.destroyed);
      call.failed(kind);
      // Only before anything reached the client; retry() says whether the method, the
      // attempts left, the budget and the endpoints allow another.
      const next = kind === 'cancelled' || reply.sent || reply.raw.headersSent ? undefined : call.retry();
      if (next !== undefined) {
        hooks.onRetry(ctx, endpoint, translated, next);
        try {
          send(reply, ctx, policy, hooks, call, next);
          return;
        } catch {
          call.failed('cancelled'); // reply-from refused the target: the original failure stands
        }
      }
      hooks.onUpstreamError(ctx, translated, errReply as FastifyReply);
    },
  });
}

/** The client's answer from the upstream's (reply-from has set the status, and Connection: close when the request body was not all read). */
function respond(ctx: RequestContext, method: string, reply: FastifyReply, response: UpstreamResponse, hooks: ForwardHooks): void {
  const { statusCode: status, headers, stream } = response;
  // reply-from already answered (an upstream status outside 100-599 became a 502).
  if (reply.sent) return discard(stream);
  const policy = ctx.route!.response;
  if (status >= 500 && policy.replaceErrorBodies) {
    discard(stream);
    const error = new UpstreamErrorResponse(`upstream answered ${status}`, { status, headers: errorResponseHeaders(status, headers, policy) });
    return hooks.onUpstreamErrorResponse(ctx, error, reply);
  }
  const out = clientResponseHeaders(ctx, headers);
  if (!hasNoContent(status, method)) {
    reply.headers(out).send(stream);
    return;
  }
  // No content to relay: the headers alone, Content-Length included for a 304 and HEAD
  // (RFC 9110 §8.6: the length the content would have). Streaming the empty body instead
  // turned a 304 with Content-Length into a 500: Fastify streams a 304's body like any other
  // (it skips only 1xx and 204), and undici ends that body with a length-mismatch error, since
  // it checks Content-Length against the bytes read for every response but a HEAD's
  // (undici lib/dispatcher/client-h1.js onMessageComplete). undici closes that connection.
  if (status === 204) {
    // RFC 9110 §8.6: a 204 carries no Content-Length (Fastify dropped it, and Content-Type, on this path before).
    delete out['content-length'];
    delete out['content-type'];
  }
  discard(stream);
  reply.headers(out).send();
}
