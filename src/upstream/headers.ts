// What the upstream is told, and what the client is told back. Hop-by-hop headers belong
// to one connection (RFC 9110 §7.6.1) and never cross the proxy; forwarding headers are
// written by the gateway from what hygiene established, never copied from the client.
import type { IncomingHttpHeaders } from 'node:http';
import type { RequestContext } from '../pipeline/context.ts';

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

// Client-supplied forwarding and identity hints an upstream might believe. Upstreams learn
// who is calling from the signed assertion only; anything that looks like it is removed.
const SPOOFABLE = [
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-user',
  'x-real-ip',
  'x-request-id',
  'x-remote-user',
  'x-original-url',
  'x-rewrite-url',
];
const SPOOFABLE_PREFIXES = ['x-zt-', 'x-user'];

/** Compiled once per Runtime from server.stripHeaders and the assertion header name. */
export interface ForwardingPolicy {
  /** Never forwarded: hop-by-hop, spoofable, configured, and the assertion header itself. */
  readonly strip: ReadonlySet<string>;
  readonly stripPrefixes: readonly string[];
  readonly assertionHeader: string;
}

export function compileForwardingPolicy(extraStrip: readonly string[], assertionHeader: string): ForwardingPolicy {
  return Object.freeze({
    strip: new Set([...HOP_BY_HOP, ...SPOOFABLE, ...extraStrip.map((h) => h.toLowerCase()), assertionHeader]),
    stripPrefixes: Object.freeze([...SPOOFABLE_PREFIXES]),
    assertionHeader,
  });
}

const HOP_BY_HOP_SET: ReadonlySet<string> = new Set(HOP_BY_HOP);
const CREDENTIALS: ReadonlySet<string> = new Set(['authorization', 'dpop']);

/**
 * Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). The common values
 * (keep-alive, close) name nothing else, so they cost no parsing.
 */
function connectionListed(value: unknown): ReadonlySet<string> | undefined {
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
  const listed = connectionListed(ctx.headers.connection);
  const dropCredentials = !ctx.route?.forwardAuthorization;
  const out: IncomingHttpHeaders = {};
  for (const name in ctx.headers) {
    if (policy.strip.has(name) || (listed !== undefined && listed.has(name))) continue;
    if (dropCredentials && CREDENTIALS.has(name)) continue; // upstreams get the assertion instead
    if (name.charCodeAt(0) === 120 /* x */ && policy.stripPrefixes.some((p) => name.startsWith(p))) continue;
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

/** Upstream response headers as the client will see them. */
export function clientResponseHeaders(ctx: RequestContext, headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const listed = connectionListed(headers.connection);
  const out: IncomingHttpHeaders = {};
  for (const name in headers) {
    if (HOP_BY_HOP_SET.has(name) || (listed !== undefined && listed.has(name))) continue;
    out[name] = headers[name];
  }
  out['x-request-id'] = ctx.id;
  return out;
}
