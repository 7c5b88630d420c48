// What the upstream is told, and what the client is told back. Hop-by-hop headers belong
// to one connection (RFC 9110 §7.6.1) and never cross the proxy; forwarding headers are
// written by the gateway from what hygiene established, never copied from the client.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
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

// Client-supplied forwarding/identity hints an upstream might believe.
const SPOOFABLE = ['forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'x-request-id'];

/** Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). */
function connectionListed(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value.join(',') : value)
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter(Boolean);
}

function stripHopByHop(headers: IncomingHttpHeaders | OutgoingHttpHeaders, original: IncomingHttpHeaders | OutgoingHttpHeaders): void {
  for (const name of connectionListed(original.connection as string | string[] | undefined)) delete headers[name];
  for (const name of HOP_BY_HOP) delete headers[name];
}

/**
 * Headers for the upstream request. `headers` is a copy the caller owns (reply-from passes
 * one with Host already set to the upstream's); `original` is the client's, for Connection.
 */
export function upstreamRequestHeaders(ctx: RequestContext, headers: IncomingHttpHeaders): IncomingHttpHeaders {
  stripHopByHop(headers, ctx.headers);
  if (ctx.headers.te === 'trailers') headers.te = 'trailers'; // the one TE value that may pass
  for (const name of SPOOFABLE) delete headers[name];
  headers['x-forwarded-for'] = ctx.forwardedFor;
  headers['x-forwarded-proto'] = ctx.forwardedProto;
  headers['x-forwarded-host'] = ctx.forwardedHost;
  headers['x-request-id'] = ctx.id;
  return headers;
}

/** Upstream response headers as the client will see them. */
export function clientResponseHeaders(ctx: RequestContext, headers: IncomingHttpHeaders): IncomingHttpHeaders {
  stripHopByHop(headers, headers);
  headers['x-request-id'] = ctx.id;
  return headers;
}
