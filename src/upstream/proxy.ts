// Stage 8: forward to the route's upstream with @fastify/reply-from (undici pools per
// origin, bodies streamed both ways). Upstream failures are translated, never leaked:
// timeout → 504, anything else without a response → 502 (fastify-reply-from lib/errors.js).
import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Agent, type Dispatcher } from 'undici';
import type { RequestContext } from '../pipeline/context.ts';
import { UpstreamTimeoutError, UpstreamUnreachableError, type ZtError } from '../pipeline/errors.ts';
import { clientResponseHeaders, upstreamRequestHeaders, type ForwardingPolicy } from './headers.ts';

export interface ForwardHooks {
  /** Upstream response headers arrived (for the upstream latency histogram). */
  onUpstreamResponse(ctx: RequestContext, request: FastifyRequest): void;
  /** No response came; the error is already translated. */
  onUpstreamError(ctx: RequestContext, error: ZtError, reply: FastifyReply): void;
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
 * answer is complete, server.ts emits CLIENT_GONE on the response and undici aborts the
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

export function forward(reply: FastifyReply, ctx: RequestContext, policy: ForwardingPolicy, hooks: ForwardHooks): FastifyReply {
  const route = ctx.route!;
  return reply.from((ctx.upstreamOrigin ?? route.upstreamOrigin) + replyFromTarget(ctx.upstreamPath!), {
    timeout: route.timeoutMs,
    // reply-from retries GETs on 503 and on some socket errors by default; a gateway must
    // not multiply traffic to a struggling service behind the client's back.
    retryDelay: () => null,
    rewriteRequestHeaders: (_request, headers) => {
      const out = upstreamRequestHeaders(ctx, headers.host, policy);
      (out as Record<symbol, unknown>)[CLIENT_RESPONSE] = reply.raw;
      return out;
    },
    rewriteHeaders: (headers, request) => {
      hooks.onUpstreamResponse(ctx, request as FastifyRequest);
      return clientResponseHeaders(ctx, headers);
    },
    onError: (errReply, { error }) =>
      hooks.onUpstreamError(ctx, translateUpstreamError(error as { statusCode?: number }), errReply as FastifyReply),
  });
}
