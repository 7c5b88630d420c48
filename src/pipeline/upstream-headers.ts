// What the upstream is told, and what the client is told back. Hop-by-hop headers belong
// to one connection (RFC 9110 §7.6.1) and never cross the proxy; forwarding headers are
// written by the gateway from what hygiene established, never copied from the client.
import type { IncomingHttpHeaders } from 'node:http';
import type { RequestContext } from './context.ts';
import { HOP_BY_HOP } from '../upstream/header-deny-list.ts';
import { scopedCookieHeader } from '../upstream/cookies.ts';

/** RFC 6455 handshake fields, forwarded only on a relayed WebSocket handshake and its 101. */
export const WEBSOCKET_HANDSHAKE = ['sec-websocket-key', 'sec-websocket-version', 'sec-websocket-protocol', 'sec-websocket-extensions', 'sec-websocket-accept'] as const;

/** Never cross the gateway in either direction (response-headers.ts drops them from every response). */
export const NEVER_CROSSES: readonly string[] = [
  ...HOP_BY_HOP,
  // Expect: 100-continue is answered by the gateway itself (server.ts, after the pipeline);
  // undici refuses to send it, and the upstream gets the body without having to invite it.
  'expect',
  // RFC 7540 §3.2.1: HTTP2-Settings belongs to an h2c upgrade on this connection (hop-by-hop by
  // definition), and the gateway never relays one; an upstream must not see half a handshake.
  'http2-settings',
  // RFC 6455 §4.1-4.2: handshake fields, meaningless outside a handshake. On a plain request
  // (an Upgrade the gateway ignored, or none) they would let a client make an upstream believe
  // a handshake happened; server/websocket.ts puts them back on the one request it relays
  // as a WebSocket, and on that request's 101.
  ...WEBSOCKET_HANDSHAKE,
];

/** Compiled once per Runtime: what never crosses to the upstream whatever the route says. */
export interface ForwardingPolicy {
  /** Never forwarded: hop-by-hop and the assertion header itself. */
  readonly strip: ReadonlySet<string>;
  readonly assertionHeader: string;
}

// Identity, client-address, certificate, original-URL, forwarding and method-override headers
// are on the route's deny list (header-deny-list.ts, route.denyList), so that the policy and the
// upstream leave out the same ones.
export function compileForwardingPolicy(assertionHeader: string): ForwardingPolicy {
  return Object.freeze({ strip: new Set([...NEVER_CROSSES, assertionHeader]), assertionHeader });
}

const CREDENTIALS: ReadonlySet<string> = new Set(['authorization', 'dpop']);

/**
 * Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). The common values
 * (keep-alive, close) name nothing else, so they cost no parsing.
 */
export function connectionListed(value: unknown): ReadonlySet<string> | undefined {
  if (value === undefined || value === 'keep-alive' || value === 'close' || value === 'Keep-Alive') return undefined;
  const names = (Array.isArray(value) ? value.join(',') : String(value)).split(',').map((n) => n.trim().toLowerCase());
  return new Set(names.filter(Boolean));
}

// Headers are copied into a fresh object rather than deleted from the given one: deleting
// properties turns a V8 object into a slow dictionary, and this runs twice per request.

/**
 * Headers for the upstream request, from the client's (`ctx.headers`). `upstreamHost` is
 * what reply-from set as Host for the upstream.
 */
export function upstreamRequestHeaders(ctx: RequestContext, upstreamHost: string | undefined, policy: ForwardingPolicy): IncomingHttpHeaders {
  const listed = ctx.connectionListed;
  const route = ctx.route!;
  const dropCredentials = !route.forwardAuthorization;
  const deny = route.denyList;
  const obligations = ctx.obligationHeaders;
  const cookieMarker = route.response.cookieMarker;
  const out: IncomingHttpHeaders = {};
  for (const name in ctx.headers) {
    if (policy.strip.has(name) || (listed !== undefined && listed.has(name))) continue;
    if (dropCredentials && CREDENTIALS.has(name)) continue; // upstreams get the assertion instead
    if (deny.denies(name)) continue; // the same test the policy input applies (policy-input.ts)
    if (obligations !== undefined && obligations.has(name)) continue; // only the deciding rule may set it
    if (name === 'cookie' && cookieMarker !== undefined) {
      // Only this route's cookies, under the names its upstream gave them (cookies.ts).
      const own = scopedCookieHeader(ctx.headers.cookie!, cookieMarker);
      if (own !== undefined) out.cookie = own;
      continue;
    }
    out[name] = ctx.headers[name];
  }
  if (ctx.headers.te === 'trailers') out.te = 'trailers'; // the one TE value that may pass
  if (upstreamHost !== undefined) out.host = upstreamHost;
  // Obligations of the deciding policy rules; the policy loader refuses reserved names.
  const extra = ctx.decision?.obligations.headers;
  if (extra !== undefined) for (const name in extra) out[name] = extra[name];
  if (ctx.assertion !== undefined) out[policy.assertionHeader] = ctx.assertion;
  out['x-forwarded-for'] = ctx.forwardedFor;
  out['x-forwarded-proto'] = ctx.forwardedProto;
  out['x-forwarded-host'] = ctx.forwardedHost;
  out['x-request-id'] = ctx.id;
  return out;
}

/**
 * Upstream response headers as the client will see them: the route's response policy
 * (response-headers.ts, compiled once) drops, rewrites or passes each, one map lookup per
 * header; then the route's own headers are set over the upstream's.
 */
export function clientResponseHeaders(ctx: RequestContext, headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const { rules, dropPrefix, setHeaders } = ctx.route!.response;
  const listed = connectionListed(headers.connection);
  const out: IncomingHttpHeaders = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || (listed !== undefined && listed.has(name))) continue;
    const rule = rules.get(name);
    if (rule === undefined) {
      if (dropPrefix === undefined || !name.startsWith(dropPrefix)) out[name] = value;
    } else if (rule !== 'drop') {
      const rewritten = rule(value, ctx);
      if (rewritten !== undefined) out[name] = rewritten;
    }
  }
  if (setHeaders !== undefined) for (const name in setHeaders) out[name] = setHeaders[name];
  const limited = ctx.rateLimit;
  if (limited !== undefined) {
    // The gateway's limits, not the upstream's own (which it may also send: replaced here).
    out['ratelimit-policy'] = limited.policy;
    if (limited.rateLimit === '') delete out.ratelimit;
    else out.ratelimit = limited.rateLimit;
  }
  out['x-request-id'] = ctx.id;
  return out;
}
