// Stage 1: make the request unambiguous before anything decides on it. Every later stage
// (route, authz, limit) and the upstream must see the same path, host and client, so
// anything two parsers could read differently is rejected here, not "fixed".
// Path rules follow Envoy's edge hardening: normalize_path, merge_slashes and
// path_with_escaped_slashes_action: REJECT_REQUEST.

import { isIP, isIPv6 } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import type { RequestContext, Stage } from './context.ts';
import { BadPathError, BadRequestError, PayloadTooLargeError } from './errors.ts';

const SLASH = 0x2f;
const DOT = 0x2e;
const PERCENT = 0x25;
const BACKSLASH = 0x5c;
const HASH = 0x23;
const COMMA = 0x2c;

// One message for every path rejection: the client learns nothing about which rule fired.
const badPath = (): BadPathError => new BadPathError('ambiguous request path');

/** Value of a hex digit, or -1. */
function hex(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20; // ASCII lower-case
  return l >= 0x61 && l <= 0x66 ? l - 0x57 : -1;
}

/** RFC 3986 §2.3 unreserved, minus '.', which never reaches here decoded. */
function isUnreserved(b: number): boolean {
  const l = b | 0x20;
  return (l >= 0x61 && l <= 0x7a) || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x5f || b === 0x7e;
}

/**
 * Decodes escapes of unreserved characters (RFC 3986 §6.2.2.2: `/ech%6f` and `/echo` are the
 * same resource, so they must route the same) and upper-cases the hex of all others (§6.2.2.1).
 * Escapes that would change the path's structure if any hop decoded them are rejected:
 * %2F and %5C (`/public/..%2fadmin`: a slash the router does not see but the upstream may),
 * %2E (`/%2e%2e/`: a dot segment resolved after our check), %00 and other controls
 * (NUL truncation in C upstreams, CR/LF injection into logs and headers).
 */
function decodeEscapes(raw: string): string {
  let out = '';
  let from = 0;
  for (let i = raw.indexOf('%'); i !== -1; i = raw.indexOf('%', i)) {
    const hi = hex(raw.charCodeAt(i + 1)); // NaN past the end → -1
    const lo = hex(raw.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) throw badPath(); // `%zz`, `%4`: each parser guesses differently
    const b = hi * 16 + lo;
    if (b === DOT || b === SLASH || b === BACKSLASH || b < 0x20 || b === 0x7f) throw badPath();
    out += raw.slice(from, i) + (isUnreserved(b) ? String.fromCharCode(b) : raw.slice(i, i + 3).toUpperCase());
    i += 3;
    from = i;
  }
  return out + raw.slice(from);
}

/** RFC 3986 §5.2.4 remove_dot_segments plus merge_slashes, refusing to climb above the root. */
function normaliseSlow(raw: string): { path: string; hadDotSegments: boolean } {
  const parts = (raw.includes('%') ? decodeEscapes(raw) : raw).split('/');
  const out: string[] = [];
  let hadDotSegments = false;
  for (const part of parts) {
    if (part === '') continue; // duplicate (or leading) slash
    if (part === '.' || part === '..') {
      hadDotSegments = true;
      // `/a/../../etc`: RFC 3986 silently clamps at the root; a server that does not would
      // escape its document root, so the two would disagree. Refuse instead.
      if (part === '..' && out.pop() === undefined) throw badPath();
      continue;
    }
    out.push(part);
  }
  // A path ending in '/', '/.' or '/..' names a directory (§5.2.4 keeps the slash): `/echo/` ≠ `/echo`.
  const last = parts[parts.length - 1];
  const trailing = out.length > 0 && (last === '' || last === '.' || last === '..');
  return { path: '/' + out.join('/') + (trailing ? '/' : ''), hadDotSegments };
}

/**
 * Normalises the path part of an origin-form request target (RFC 9112 §3.2.1), or throws
 * BadPathError when it is ambiguous. Pure; runs on every request.
 *
 * Rejected: not starting with '/'; backslash (IIS and some frameworks treat it as '/');
 * controls, space, '#' and non-ASCII raw bytes (not allowed by RFC 3986 §3.3; Node reads them
 * as latin1 while an upstream may read UTF-8, so the authorised and the served path could
 * differ); malformed escapes; escaped '.', '/', '\', NUL and controls; '..' above the root.
 */
export function normalisePath(rawPath: string): { path: string; hadDotSegments: boolean } {
  if (rawPath.charCodeAt(0) !== SLASH) throw badPath();
  // Fast path: one scan with no allocation. Most paths have no escapes, no dot segments and
  // no '//', and come back unchanged. A '.' inside a segment (`/v1/file.json`) stays fast.
  const len = rawPath.length;
  let slow = false;
  let segStart = 1;
  for (let i = 1; i <= len; i++) {
    const c = i === len ? SLASH : rawPath.charCodeAt(i);
    if (c === SLASH) {
      const n = i - segStart;
      if (
        (n === 0 && i < len) || // '//' (an empty last segment is just a trailing slash)
        (n === 1 && rawPath.charCodeAt(segStart) === DOT) ||
        (n === 2 && rawPath.charCodeAt(segStart) === DOT && rawPath.charCodeAt(segStart + 1) === DOT)
      ) {
        slow = true;
      }
      segStart = i + 1;
    } else if (c === PERCENT) {
      slow = true;
    } else if (c <= 0x20 || c >= 0x7f || c === BACKSLASH || c === HASH) {
      throw badPath();
    }
  }
  return slow ? normaliseSlow(rawPath) : { path: rawPath, hadDotSegments: false };
}

export interface HygieneOptions {
  /** Trust function of the proxies in front of us, as returned by `proxyaddr.compile(list)`. */
  trust: (addr: string, hopIndex: number) => boolean;
  maxBodyBytes: number;
}

/** Node joins repeated unknown headers with ', ', but the type allows arrays; treat them alike. */
function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** Text before the first comma, trimmed: the hop closest to the client in a proxy-appended list. */
function firstValue(v: string): string {
  const comma = v.indexOf(',');
  return (comma === -1 ? v : v.slice(0, comma)).trim();
}

/**
 * The client address with proxy-addr's semantics: walk the X-Forwarded-For list right to left
 * from the peer while each hop is trusted; the result is the first untrusted hop, or the
 * leftmost one. We cannot call `proxyaddr(req, trust)` because it needs an IncomingMessage
 * (it reads req.socket) and stages see only the RequestContext; the trust function itself is
 * proxy-addr's, so CIDR and IPv4-mapped handling are identical. Walking lazily also means an
 * untrusted peer costs one trust() call, however long the header it sent.
 * One deliberate difference: a hop that is not an IP ("unknown", "1.2.3.4:80", junk from a
 * trusted-but-sloppy client) ends the walk at the hop that reported it, so clientIp (a
 * rate-limit and risk key) is always an address we could actually have seen.
 */
function clientAddress(peer: string, peerTrusted: boolean, xff: string | undefined, trust: HygieneOptions['trust']): string {
  if (xff === undefined || !peerTrusted) return peer;
  let addr = peer;
  let hop = 1;
  let end = xff.length;
  for (let i = end - 1; i >= -1; i--) {
    if (i !== -1 && xff.charCodeAt(i) !== COMMA) continue;
    const candidate = xff.slice(i + 1, end).trim();
    end = i;
    if (candidate === '') continue; // `a,,b` and trailing commas, as the `forwarded` module skips them
    if (isIP(candidate) === 0) return addr;
    addr = candidate;
    if (!trust(addr, hop++)) return addr;
  }
  return addr;
}

// RFC 3986 §3.2.2 host, narrowed to what a gateway should route on: an IPv6 literal or
// dot-separated labels (IPv4 is a special case), optional trailing dot (FQDN), optional port.
// It leaves out userinfo '@' (`Host: evil@good` confusion), spaces, ',' (a joined repeat of
// the header), '%', '/' and empty labels.
const HOST_RE = /^(?:(\[[0-9a-f:.]+\])|([a-z0-9_-]+(?:\.[a-z0-9_-]+)*)\.?)(?::([0-9]{1,5}))?$/;

/** Host without port (IPv6 keeps its brackets, as URL.hostname does) and host with port. */
function parseHost(value: string | undefined): { host: string; withPort: string } {
  const m = value === undefined ? null : HOST_RE.exec(value.toLowerCase());
  const ipv6 = m?.[1];
  const host = ipv6 ?? m?.[2];
  const port = m?.[3];
  if (host === undefined || (ipv6 !== undefined && !isIPv6(ipv6.slice(1, -1)))) {
    throw new BadRequestError('invalid Host header');
  }
  if (port !== undefined && Number(port) > 65535) throw new BadRequestError('invalid Host header');
  // The trailing dot is dropped (Envoy's strip_trailing_host_dot) so `admin.x.com.` cannot
  // dodge a host-bound route that the upstream's virtual hosting would still match.
  return { host, withPort: port === undefined ? host : `${host}:${port}` };
}

/**
 * Request smuggling guard (RFC 9112 §6.3): a message with both Content-Length and
 * Transfer-Encoding, or a Content-Length that is not one decimal integer (`1, 2`, `+5`, `-1`),
 * could be framed differently by us and by the upstream. Node's parser already rejects most
 * of these; this check is two header reads and is kept so the guarantee does not depend on
 * the listener. A chunked body has no length up front: bounding it while streaming is not this stage's job.
 */
function checkFraming(headers: IncomingHttpHeaders, maxBodyBytes: number): void {
  const cl = headers['content-length'];
  if (cl === undefined) return;
  if (headers['transfer-encoding'] !== undefined) throw new BadRequestError('ambiguous message framing');
  if (!/^[0-9]+$/.test(cl)) throw new BadRequestError('invalid Content-Length');
  // Beyond 15 digits a double loses precision; any such length is over the limit anyway.
  if (cl.length > 15 || Number(cl) > maxBodyBytes) throw new PayloadTooLargeError('request body too large');
}

/**
 * Stage 1. Fills path, hadDotSegments, rawPath, query, host, clientIp and the X-Forwarded-*
 * values the upstream stage sends in place of the client's own. Forwarding headers count only
 * when the TCP peer is a trusted proxy; from anyone else they are spoofable and ignored.
 */
function hostLines(rawHeaders: readonly string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') count++;
  }
  return count;
}

export function createHygieneStage(opts: HygieneOptions): Stage {
  const { trust, maxBodyBytes } = opts;
  // Clients send the same Host request after request: remember the last one parsed.
  let lastHost: string | undefined;
  let lastParsed: { host: string; withPort: string } | undefined;
  const parseHostCached = (value: string | undefined) => {
    if (value !== lastHost || lastParsed === undefined) {
      lastParsed = parseHost(value); // throws on a bad one, which is then not remembered
      lastHost = value;
    }
    return lastParsed;
  };
  return (ctx: RequestContext): void => {
    const { headers, peerIp } = ctx;
    checkFraming(headers, maxBodyBytes);

    // Only origin-form (RFC 9112 §3.2.1): absolute-form and '*' do not start with '/' and are
    // rejected by normalisePath. The query is passed on as received: Node's parser has already
    // refused controls, spaces and non-ASCII in the target, but not '#', which origin-form
    // cannot carry and an upstream may cut off as a fragment.
    const q = ctx.rawUrl.indexOf('?');
    const rawPath = q === -1 ? ctx.rawUrl : ctx.rawUrl.slice(0, q);
    const query = q === -1 ? '' : ctx.rawUrl.slice(q);
    const { path, hadDotSegments } = normalisePath(rawPath);
    if (query.includes('#')) throw badPath();
    ctx.rawPath = rawPath;
    ctx.query = query;
    ctx.path = path;
    ctx.hadDotSegments = hadDotSegments;

    const xff = header(headers, 'x-forwarded-for')?.trim() || undefined;
    const peerTrusted = trust(peerIp, 0);
    ctx.clientIp = clientAddress(peerIp, peerTrusted, xff, trust);
    // Append, never forward blindly: an untrusted client's own X-Forwarded-For is replaced.
    ctx.forwardedFor = peerTrusted && xff !== undefined ? `${xff}, ${peerIp}` : peerIp;

    const scheme = ctx.tls ? 'https' : 'http';
    const xfp = peerTrusted ? header(headers, 'x-forwarded-proto') : undefined;
    const proto = xfp === undefined ? undefined : firstValue(xfp).toLowerCase();
    ctx.forwardedProto = proto === 'http' || proto === 'https' ? proto : scheme;

    // Node keeps the first of repeated Host lines; RFC 9112 §3.2 wants a 400, since a proxy
    // and an upstream that pick different ones route the same request differently. A ','
    // (a joined repeat of X-Forwarded-Host) fails HOST_RE.
    if (hostLines(ctx.rawHeaders) > 1) throw new BadRequestError('repeated Host header');
    // X-Forwarded-Host takes the first value, the host the client addressed at the outermost
    // proxy (as Express does).
    const xfh = peerTrusted ? header(headers, 'x-forwarded-host') : undefined;
    const { host, withPort } = parseHostCached(xfh !== undefined ? firstValue(xfh) : headers.host);
    ctx.host = host;
    ctx.forwardedHost = withPort;
  };
}
