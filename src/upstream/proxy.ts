// Stage 8: forward to the route's upstream with @fastify/reply-from (undici pools per
// origin, bodies streamed both ways). Upstream failures are translated, never leaked:
// timeout → 504, anything else without a response → 502 (fastify-reply-from lib/errors.js).
import type { FastifyReply, FastifyRequest } from 'fastify';
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

export function forward(reply: FastifyReply, ctx: RequestContext, policy: ForwardingPolicy, hooks: ForwardHooks): FastifyReply {
  const route = ctx.route!;
  return reply.from((ctx.upstreamOrigin ?? route.upstreamOrigin) + replyFromTarget(ctx.upstreamPath!), {
    timeout: route.timeoutMs,
    // reply-from retries GETs on 503 and on some socket errors by default; a gateway must
    // not multiply traffic to a struggling service behind the client's back.
    retryDelay: () => null,
    rewriteRequestHeaders: (_request, headers) => upstreamRequestHeaders(ctx, headers.host, policy),
    rewriteHeaders: (headers, request) => {
      hooks.onUpstreamResponse(ctx, request as FastifyRequest);
      return clientResponseHeaders(ctx, headers);
    },
    onError: (errReply, { error }) =>
      hooks.onUpstreamError(ctx, translateUpstreamError(error as { statusCode?: number }), errReply as FastifyReply),
  });
}
