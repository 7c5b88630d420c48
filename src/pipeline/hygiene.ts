// Stage 1: make the request unambiguous before anything decides on it. Every later stage
// (route, authz, limit) and the upstream must see the same path, host and client, so
// anything two parsers could read differently is rejected here, not "fixed".
// Path rules follow Envoy's edge hardening (merge_slashes, path_with_escaped_slashes_action:
// REJECT_REQUEST), stricter on dot segments: refused in every spelling, never resolved. The
// authority must be one this gateway serves (server.publicOrigins, route hosts), so neither
// X-Forwarded-Host nor the DPoP htu origin is ever the client's choice.

import { isIP, isIPv6 } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import type { RequestContext, Stage } from './context.ts';
import { BadPathError, BadRequestError, MisdirectedRequestError, PayloadTooLargeError } from '../core/errors.ts';
import { connectionListed } from './upstream-headers.ts';

const SLASH = 0x2f;
const DOT = 0x2e;
const PERCENT = 0x25;
const BACKSLASH = 0x5c;
const HASH = 0x23;
const COMMA = 0x2c;
const SEMICOLON = 0x3b;

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

/** A byte whose escape is refused: it changes the path's structure if any hop decodes it. */
function isStructural(b: number): boolean {
  return b === DOT || b === SLASH || b === BACKSLASH || b === PERCENT || b < 0x20 || b === 0x7f;
}

/**
 * Characters RFC 3986 does not allow raw in a path but Node's parser lets through. The WHATWG
 * URL parser (and so the proxy library, and browsers) escapes some of them and not others, so
 * the path the policy saw and the one the upstream received could differ: they are escaped
 * here, once, for everyone.
 */
const ESCAPE_RAW: Readonly<Record<string, string>> = { '"': '%22', '<': '%3C', '>': '%3E', '^': '%5E', '`': '%60', '{': '%7B', '|': '%7C', '}': '%7D' };
function needsEscape(c: number): boolean {
  return c === 0x22 || c === 0x3c || c === 0x3e || c === 0x5e || c === 0x60 || c === 0x7b || c === 0x7c || c === 0x7d;
}

/**
 * Decodes escapes of unreserved characters (RFC 3986 §6.2.2.2: `/ech%6f` and `/echo` are the
 * same resource, so they must route the same) and upper-cases the hex of all others (§6.2.2.1).
 * Escapes that would change the path's structure if any hop decoded them are rejected:
 * %2F and %5C (`/public/..%2fadmin`: a slash the router does not see but the upstream may),
 * %2E (`/%2e%2e/`: a dot segment resolved after our check), %00 and other controls
 * (NUL truncation in C upstreams, CR/LF injection into logs and headers), and the same
 * escaped twice (`%252e`, `%255c`, `%2525…`: an upstream or framework that decodes once
 * more, as IIS and some servlet filters do, sees the dot, slash or backslash).
 * Escapes of non-ASCII bytes must spell well-formed UTF-8 (RFC 3629 §3): the overlong
 * `%c0%ae` is '.' to a lenient decoder (the IIS Unicode traversal) and an error to a strict one.
 */
function decodeEscapes(raw: string): string {
  let out = '';
  let from = 0;
  let nonAscii = false;
  for (let i = raw.indexOf('%'); i !== -1; i = raw.indexOf('%', i)) {
    const hi = hex(raw.charCodeAt(i + 1)); // NaN past the end → -1
    const lo = hex(raw.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) throw badPath(); // `%zz`, `%4`, `%u002e`: each parser guesses differently
    const b = hi * 16 + lo;
    if (b !== PERCENT && isStructural(b)) throw badPath();
    if (b >= 0x80) nonAscii = true;
    out += raw.slice(from, i) + (isUnreserved(b) ? String.fromCharCode(b) : raw.slice(i, i + 3).toUpperCase());
    i += 3;
    from = i;
  }
  out += raw.slice(from);
  // Escaped twice, checked on what this decoding produced rather than on the raw text: the
  // `%2e` of `%252e` may itself be spelt with escapes (`%25%32%65` decodes to `%252e`).
  for (let i = out.indexOf('%25'); i !== -1; i = out.indexOf('%25', i + 3)) {
    const hi = hex(out.charCodeAt(i + 3));
    const lo = hex(out.charCodeAt(i + 4));
    // ';' too: `..%253b` is `..;`, a dot segment to a servlet container, after two decodings.
    if (hi >= 0 && lo >= 0 && (isStructural(hi * 16 + lo) || hi * 16 + lo === SEMICOLON)) throw badPath();
  }
  if (nonAscii) {
    let text: string;
    try {
      text = decodeURIComponent(out); // ECMAScript's decoder refuses overlong forms, surrogates and stray bytes
    } catch {
      throw badPath();
    }
    // Look-alikes that Unicode compatibility normalisation (NFKC: Python's and Java's
    // normalisers, IIS "best fit") turns into path syntax: the fullwidth full stop and
    // solidus (U+FF0E, U+FF0F), the small full stop (U+FE52), the one dot leader (U+2024)…
    // `/．．／admin` is `/../admin` to such an upstream.
    const normalised = text.normalize('NFKC');
    if (normalised !== text && countSyntax(normalised) !== countSyntax(text)) throw badPath();
  }
  return out;
}

/** How many characters of path syntax ('.', '/', '\\', ';', '%', '?', '#') a decoded path holds. */
function countSyntax(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === DOT || c === SLASH || c === BACKSLASH || c === SEMICOLON || c === PERCENT || c === 0x3f || c === HASH) n++;
  }
  return n;
}

/**
 * A segment some server reads as a dot segment: `.` and `..` (RFC 3986 §3.3), the same with
 * path parameters (`..;x`, `.;`: Tomcat, Jetty and Spring drop `;…` first), or padded with
 * escaped spaces (`..%20`: Windows and IIS trim trailing spaces and dots).
 */
function isDotSegment(seg: string): boolean {
  const n = seg.length;
  if (n === 0 || seg.charCodeAt(0) !== DOT) return false;
  let dots = 1;
  if (n > 1 && seg.charCodeAt(1) === DOT) dots = 2;
  if (n === dots) return true;
  const rest = seg.slice(dots);
  if (rest.charCodeAt(0) === SEMICOLON) return true;
  const upper = rest.toUpperCase();
  if (upper.startsWith('%3B')) return true;
  for (let i = 0; i < upper.length; i += 3) if (upper.slice(i, i + 3) !== '%20') return false;
  return true;
}

/** Escapes, duplicate slashes, raw characters to escape; refuses dot segments. */
function normaliseSlow(raw: string): string {
  let text = raw.includes('%') ? decodeEscapes(raw) : raw;
  let escaped = '';
  let from = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (needsEscape(c)) {
      escaped += text.slice(from, i) + ESCAPE_RAW[text[i]!];
      from = i + 1;
    }
  }
  if (from > 0) text = escaped + text.slice(from);
  const parts = text.split('/');
  const out: string[] = [];
  for (const part of parts) {
    if (part === '') continue; // duplicate (or leading) slash
    if (isDotSegment(part)) throw badPath();
    out.push(part);
  }
  // A path ending in '/' names a directory: `/echo/` ≠ `/echo`.
  const trailing = out.length > 0 && parts[parts.length - 1] === '';
  return '/' + out.join('/') + (trailing ? '/' : '');
}

/**
 * Normalises the path part of an origin-form request target (RFC 9112 §3.2.1), or throws
 * BadPathError when it is ambiguous. Pure; runs on every request.
 *
 * Every dot segment is refused, not resolved: `/echo/a/../b` is 400. Resolving one is what
 * the gateway and the upstream (or a servlet container's own rules for `..;`) can do
 * differently, and no client has a reason to send one (browsers and HTTP libraries remove
 * them before sending, RFC 3986 §5.2.4). Segments that merely start with dots (`...`, `..x`,
 * `.well-known`) are names and pass.
 *
 * Also rejected: not starting with '/'; backslash (IIS and some frameworks treat it as '/');
 * controls, space, '#' and non-ASCII raw bytes (not allowed by RFC 3986 §3.3; Node reads them
 * as latin1 while an upstream may read UTF-8, so the authorised and the served path could
 * differ); malformed escapes; escaped '.', '/', '\', '%', NUL and controls; ill-formed UTF-8.
 * Merged: duplicate slashes. Escaped: raw `"<>^`{|}` (see ESCAPE_RAW).
 */
export function normalisePath(rawPath: string): string {
  if (rawPath.charCodeAt(0) !== SLASH) throw badPath();
  // Fast path: one scan with no allocation. Most paths have no escapes, no dot segments and
  // no '//', and come back unchanged. A '.' inside a segment (`/v1/file.json`) stays fast.
  const len = rawPath.length;
  let slow = false;
  let segStart = 1;
  for (let i = 1; i <= len; i++) {
    const c = i === len ? SLASH : rawPath.charCodeAt(i);
    if (c === SLASH || c === SEMICOLON) {
      const n = i - segStart;
      if (n === 0 && c === SLASH && i < len) slow = true; // '//' (an empty last segment is just a trailing slash)
      // '.', '..', '.;x', '..;x' (a ';' further on is a path parameter of a named segment)
      if (i > 0 && segStart > 0 && rawPath.charCodeAt(segStart - 1) === SLASH) {
        if ((n === 1 && rawPath.charCodeAt(segStart) === DOT) || (n === 2 && rawPath.charCodeAt(segStart) === DOT && rawPath.charCodeAt(segStart + 1) === DOT)) {
          throw badPath();
        }
      }
      segStart = i + 1;
    } else if (c === PERCENT || needsEscape(c)) {
      slow = true;
    } else if (c <= 0x20 || c >= 0x7f || c === BACKSLASH || c === HASH) {
      throw badPath();
    }
  }
  return slow ? normaliseSlow(rawPath) : rawPath;
}

export interface HygieneOptions {
  /** Trust function of the proxies in front of us, as returned by `proxyaddr.compile(list)`. */
  trust: (addr: string, hopIndex: number) => boolean;
  maxBodyBytes: number;
  /** Which authorities this gateway answers for (see compileAuthorities). */
  authorities: Authorities;
  /** server.headersWithUnderscores: 'reject' refuses a request with such a header name; 'drop' leaves it to the deny list. */
  headersWithUnderscores: 'drop' | 'reject';
}

/**
 * The origins this gateway serves, compiled from server.publicOrigins and the routes' hosts.
 * The request's authority (Host, or X-Forwarded-Host/-Proto from a trusted proxy) must be one
 * of them: it becomes X-Forwarded-Host and the origin DPoP proofs are checked against
 * (RFC 9449 §4.3 step 9), so a client cannot choose either.
 */
export interface Authorities {
  /** "https://gw.example.com" (default port left out) → that origin. */
  readonly origins: ReadonlyMap<string, string>;
  /** Route host patterns ("api.example.com", "*.example.com"); served on the scheme's default port only. */
  readonly routeHosts: readonly string[];
  /**
   * No publicOrigins configured: accept the address the client actually connected to (the
   * socket's local address and port), and loopback names when that address is loopback. DNS
   * names, and anything behind a proxy, need publicOrigins.
   */
  readonly localDefault: boolean;
}

const DEFAULT_PORT: Readonly<Record<string, string>> = { http: '80', https: '443' };

/** Compiles publicOrigins (validated URLs: scheme, host, optional port, nothing else) and route hosts. */
export function compileAuthorities(publicOrigins: readonly string[], routeHosts: readonly string[]): Authorities {
  const origins = new Map<string, string>();
  for (const o of publicOrigins) {
    const url = new URL(o);
    origins.set(url.origin, url.origin); // URL.origin lower-cases and drops the default port
  }
  return Object.freeze({ origins, routeHosts: Object.freeze([...new Set(routeHosts.map((h) => h.toLowerCase()))]), localDefault: origins.size === 0 });
}

function routeHostMatches(patterns: readonly string[], host: string): boolean {
  for (const pattern of patterns) {
    if (pattern === host) return true;
    if (pattern.startsWith('*.') && host.endsWith(pattern.slice(1))) return true;
  }
  return false;
}

const LOOPBACK_NAMES: ReadonlySet<string> = new Set(['localhost', '127.0.0.1', '[::1]']);

function isLoopbackAddress(addr: string): boolean {
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

/** The socket address as a Host header spells it: IPv6 in brackets, IPv4-mapped as IPv4. */
function hostOfAddress(addr: string): string {
  if (addr.startsWith('::ffff:') && addr.includes('.')) return addr.slice(7);
  return addr.includes(':') ? `[${addr}]` : addr;
}

/** The origin the request addressed, or undefined when this gateway does not serve it. */
export function originFor(a: Authorities, scheme: string, host: string, port: string | undefined, local: { address: string; port: number } | undefined): string | undefined {
  const defaultPort = DEFAULT_PORT[scheme];
  const onDefault = port === undefined || port === defaultPort;
  const origin = onDefault ? `${scheme}://${host}` : `${scheme}://${host}:${port}`;
  const configured = a.origins.get(origin);
  if (configured !== undefined) return configured;
  if (onDefault && routeHostMatches(a.routeHosts, host)) return origin;
  if (a.localDefault && local !== undefined) {
    const localPort = String(local.port);
    if (port === undefined ? localPort !== defaultPort : port !== localPort) return undefined;
    const ours = hostOfAddress(local.address);
    if (host === ours || (isLoopbackAddress(local.address) && LOOPBACK_NAMES.has(host))) return origin;
  }
  return undefined;
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

/** Host without port (IPv6 keeps its brackets, as URL.hostname does) and the port, if any. */
function parseHost(value: string | undefined): { host: string; port: string | undefined } {
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
  // A port is compared as a number would be: `:080` is port 80.
  return { host, port: port === undefined ? undefined : String(Number(port)) };
}

/**
 * Request smuggling guard (RFC 9112 §6.3): a message with both Content-Length and
 * Transfer-Encoding, or a Content-Length that is not one decimal integer (`1, 2`, `+5`, `-1`),
 * could be framed differently by us and by the upstream. Node's parser already rejects most
 * of these; this check is two header reads and is kept so the guarantee does not depend on
 * the listener. A chunked body has no length up front: bounding it while streaming is not this stage's job.
 */
function checkFraming(headers: IncomingHttpHeaders, httpVersion: string, maxBodyBytes: number): void {
  // Only HTTP/1.1 and 1.0 are spoken here; Node's parser reads "HTTP/2.0" as a 1.x request
  // line, which an upstream or a logging hop may read otherwise.
  if (httpVersion !== '1.1' && httpVersion !== '1.0') throw new BadRequestError('unsupported HTTP version');
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (1.0 has no
  // chunked coding; a 1.0 hop would read the body differently).
  const te = headers['transfer-encoding'];
  if (te !== undefined) {
    if (httpVersion === '1.0') throw new BadRequestError('Transfer-Encoding in HTTP/1.0');
    // RFC 9112 §6.1: only chunked is understood here. `gzip, chunked` would be de-chunked and
    // forwarded as a plain body, the gzip coding silently lost.
    if (te.trim().toLowerCase() !== 'chunked') throw new BadRequestError('unsupported transfer coding');
  }
  const cl = headers['content-length'];
  if (cl === undefined) return;
  if (headers['transfer-encoding'] !== undefined) throw new BadRequestError('ambiguous message framing');
  if (!/^[0-9]+$/.test(cl)) throw new BadRequestError('invalid Content-Length');
  // Beyond 15 digits a double loses precision; any such length is over the limit anyway.
  if (cl.length > 15 || Number(cl) > maxBodyBytes) throw new PayloadTooLargeError('request body too large');
}

function hostLines(rawHeaders: readonly string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') count++;
  }
  return count;
}

/**
 * Stage 1. Fills path, rawPath, query, host, publicOrigin, clientIp, connectionListed and the
 * X-Forwarded-* values the upstream stage sends in place of the client's own. Forwarding
 * headers count only when the TCP peer is a trusted proxy; from anyone else they are spoofable
 * and ignored.
 */
export function createHygieneStage(opts: HygieneOptions): Stage {
  const { trust, maxBodyBytes, authorities } = opts;
  const rejectUnderscores = opts.headersWithUnderscores === 'reject';
  // Clients send the same Host request after request: remember the last one parsed.
  let lastHost: string | undefined;
  let lastParsed: { host: string; port: string | undefined } | undefined;
  const parseHostCached = (value: string | undefined) => {
    if (value !== lastHost || lastParsed === undefined) {
      lastParsed = parseHost(value); // throws on a bad one, which is then not remembered
      lastHost = value;
    }
    return lastParsed;
  };
  // …and reach the same origin: remember the last answer for the same inputs.
  let lastKey: { scheme: string; host: string; port: string | undefined; address: string; localPort: number } | undefined;
  let lastOrigin: string | undefined;
  return (ctx: RequestContext): void => {
    const { headers, peerIp } = ctx;
    checkFraming(headers, ctx.httpVersion, maxBodyBytes);
    // Envoy's headers_with_underscores_action: REJECT_REQUEST. In 'drop' mode the deny list
    // keeps such names from the policy and the upstream (header-deny-list.ts).
    if (rejectUnderscores) {
      for (const name in headers) if (name.includes('_')) throw new BadRequestError('header name with underscore');
    }

    // Only origin-form (RFC 9112 §3.2.1): absolute-form and '*' do not start with '/' and are
    // rejected by normalisePath. The query is passed on as received: Node's parser has already
    // refused controls, spaces and non-ASCII in the target, but not '#', which origin-form
    // cannot carry and an upstream may cut off as a fragment.
    const q = ctx.rawUrl.indexOf('?');
    const rawPath = q === -1 ? ctx.rawUrl : ctx.rawUrl.slice(0, q);
    const query = q === -1 ? '' : ctx.rawUrl.slice(q);
    const path = normalisePath(rawPath);
    if (query.includes('#')) throw badPath();
    ctx.rawPath = rawPath;
    ctx.query = query;
    ctx.path = path;

    // RFC 9110 §7.6.1: what the client names in Connection is for this hop only. Removed from
    // what the policy sees and what the upstream gets alike (policy-input.ts, upstream-headers.ts).
    ctx.connectionListed = connectionListed(headers.connection);

    const xff = header(headers, 'x-forwarded-for')?.trim() || undefined;
    const peerTrusted = trust(peerIp, 0);
    ctx.clientIp = clientAddress(peerIp, peerTrusted, xff, trust);
    // Append, never forward blindly: an untrusted client's own X-Forwarded-For is replaced.
    ctx.forwardedFor = peerTrusted && xff !== undefined ? `${xff}, ${peerIp}` : peerIp;

    const xfp = peerTrusted ? header(headers, 'x-forwarded-proto') : undefined;
    const proto = xfp === undefined ? undefined : firstValue(xfp).toLowerCase();
    const scheme = proto === 'http' || proto === 'https' ? proto : ctx.tls ? 'https' : 'http';

    // Node keeps the first of repeated Host lines; RFC 9112 §3.2 wants a 400, since a proxy
    // and an upstream that pick different ones route the same request differently. A ','
    // (a joined repeat of X-Forwarded-Host) fails HOST_RE.
    if (hostLines(ctx.rawHeaders) > 1) throw new BadRequestError('repeated Host header');
    // X-Forwarded-Host takes the first value, the host the client addressed at the outermost
    // proxy (as Express does).
    const xfh = peerTrusted ? header(headers, 'x-forwarded-host') : undefined;
    const { host, port } = parseHostCached(xfh !== undefined ? firstValue(xfh) : headers.host);
    let origin: string | undefined;
    const k = lastKey;
    if (k !== undefined && k.scheme === scheme && k.host === host && k.port === port && k.address === ctx.localAddress && k.localPort === ctx.localPort) {
      origin = lastOrigin;
    } else {
      // The socket's own address counts only for a Host sent by the client itself: behind a
      // proxy, the address it reached is the proxy's business, and publicOrigins says ours.
      const local = xfh === undefined ? { address: ctx.localAddress, port: ctx.localPort } : undefined;
      origin = originFor(authorities, scheme, host, port, local);
      lastKey = { scheme, host, port, address: ctx.localAddress, localPort: ctx.localPort };
      lastOrigin = origin;
    }
    // RFC 9110 §15.5.20: this server will not answer for that authority.
    if (origin === undefined) throw new MisdirectedRequestError(`not served here: ${scheme}://${host}${port === undefined ? '' : `:${port}`}`);
    ctx.host = host;
    ctx.publicOrigin = origin;
    ctx.forwardedProto = scheme;
    ctx.forwardedHost = origin.slice(scheme.length + 3);
  };
}
