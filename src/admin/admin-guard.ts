// Who may talk to the admin plane. Its users are curl, Prometheus and the kubelet, never a
// browser; yet a web page opened on the gateway's machine (or inside its network) can make
// the browser send requests to it. Two rules close that door:
// - Host: DNS rebinding points a name the attacker owns at 127.0.0.1 or the pod IP, so the
//   browser calls that name "same origin" and reads the answers. The browser still sends
//   the attacker's name in Host, so answering only names we know refuses every such request.
// - Origin / Sec-Fetch-Site: a page elsewhere that targets a real admin name (CSRF-style,
//   e.g. to start profiles) is named by the Origin (or Sec-Fetch-Site) the browser adds.
import { isIPv6 } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import { BadRequestError, ForeignOriginError, MisdirectedRequestError, type ZtError } from '../core/errors.ts';

/** The configured server.admin.hosts, compiled once. */
export interface AdminHosts {
  readonly names: ReadonlySet<string>;
  /** "*.example.com" entries as ".example.com": a subdomain matches, the bare name does not. */
  readonly suffixes: readonly string[];
}

export function compileAdminHosts(hosts: readonly string[]): AdminHosts {
  const lower = hosts.map((h) => h.toLowerCase());
  return Object.freeze({
    names: new Set(lower.filter((h) => !h.startsWith('*.'))),
    suffixes: Object.freeze(lower.filter((h) => h.startsWith('*.')).map((h) => h.slice(1))),
  });
}

export type AdminRefusalReason = 'bad_host' | 'host' | 'origin';

export interface AdminRefusal {
  readonly reason: AdminRefusalReason;
  readonly error: ZtError;
}

// An IPv6 literal or dot-separated labels, optional trailing dot, optional port. No userinfo,
// no path, no comma (two Host lines joined), no '%': what is not plainly a host is refused.
const AUTHORITY_RE = /^(?:(\[[0-9a-f:.]+\])|([a-z0-9_-]+(?:\.[a-z0-9_-]+)*)\.?)(?::([0-9]{1,5}))?$/;

interface Authority {
  /** Lower case, IPv6 in brackets, trailing dot dropped. */
  readonly host: string;
  /** As a number would print it ("080" → "80"), or undefined. */
  readonly port: string | undefined;
}

function parseAuthority(value: string): Authority | undefined {
  const m = AUTHORITY_RE.exec(value.toLowerCase());
  if (m === null) return undefined;
  const [, ipv6, name, port] = m;
  if (ipv6 !== undefined && !isIPv6(ipv6.slice(1, -1))) return undefined;
  if (port !== undefined && Number(port) > 65535) return undefined;
  return { host: (ipv6 ?? name)!, port: port === undefined ? undefined : String(Number(port)) };
}

/** The socket address as a Host header spells it: IPv6 in brackets, IPv4-mapped as IPv4. */
function hostOfAddress(addr: string): string {
  const v4 = addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
  return v4.includes(':') ? `[${v4}]` : v4;
}

function isLoopback(addr: string): boolean {
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

/**
 * A configured name; the address the request came in on (so probes and scrapes by pod IP work
 * with no configuration, and a rebinding name never equals it); `localhost` when that address
 * is loopback. Plain `localhost` only: `*.localhost` names have no use here.
 */
function hostAllowed(allowed: AdminHosts, host: string, localAddress: string | undefined): boolean {
  if (allowed.names.has(host)) return true;
  for (const suffix of allowed.suffixes) if (host.endsWith(suffix)) return true;
  if (localAddress === undefined) return false;
  return host === hostOfAddress(localAddress) || (host === 'localhost' && isLoopback(localAddress));
}

const DEFAULT_PORT: Readonly<Record<string, string>> = { http: '80', https: '443' };
// What a browser puts in Origin: scheme://host[:port], nothing else (RFC 6454 §6.2).
const ORIGIN_RE = /^(https?):\/\/([^/?#@\\\s]+)$/i;

/**
 * Is `origin` the origin this request was addressed to? Same host and port as the Host header
 * (which is already known to be allowed): a page on another port of the same machine is
 * another site, and has no business on the admin plane either.
 */
function sameOrigin(origin: string, requested: Authority | undefined): boolean {
  const m = ORIGIN_RE.exec(origin);
  if (m === null || requested === undefined) return false;
  const scheme = m[1]!.toLowerCase();
  const parsed = parseAuthority(m[2]!);
  if (parsed === undefined || parsed.host !== requested.host) return false;
  const defaultPort = DEFAULT_PORT[scheme]!;
  return (parsed.port ?? defaultPort) === (requested.port ?? defaultPort);
}

/** Host lines as sent: Node keeps the first of two, where a proxy in front may have read the second. */
function hostLines(rawHeaders: readonly string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'host') count++;
  return count;
}

export interface AdminRequestFacts {
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly httpVersion: string;
  /** socket.localAddress: the address the client connected to. */
  readonly localAddress: string | undefined;
}

/** Why this request must not be answered, or undefined. Runs before routing, for every admin path. */
export function refuseAdminRequest(allowed: AdminHosts, req: AdminRequestFacts): AdminRefusal | undefined {
  const { headers } = req;
  const hostHeader = headers.host;
  let requested: Authority | undefined;
  if (hostHeader === undefined) {
    // RFC 9112 §3.2: an HTTP/1.1 request MUST carry Host. An HTTP/1.0 one without it (old
    // health checkers send those) is answered: browsers always send Host.
    if (req.httpVersion !== '1.0') return { reason: 'bad_host', error: new BadRequestError('missing Host') };
  } else {
    if (hostLines(req.rawHeaders) > 1) return { reason: 'bad_host', error: new BadRequestError('repeated Host header') };
    requested = parseAuthority(hostHeader);
    if (requested === undefined) return { reason: 'bad_host', error: new BadRequestError('invalid Host header') };
    if (!hostAllowed(allowed, requested.host, req.localAddress)) {
      return { reason: 'host', error: new MisdirectedRequestError(`admin plane does not answer Host ${requested.host}`) };
    }
  }
  // `Origin: null` (sandboxed frames, file: pages, some redirects) names no origin we know.
  const origin = headers.origin;
  if (origin !== undefined && !sameOrigin(origin, requested)) {
    return { reason: 'origin', error: new ForeignOriginError('foreign Origin') };
  }
  // Fetch Metadata: browsers send it even where they leave Origin out (a GET from <img> or
  // <script>). Only a request the user typed (none) or the same origin's own is answered.
  const site = headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') {
    return { reason: 'origin', error: new ForeignOriginError(`Sec-Fetch-Site: ${site}`) };
  }
  return undefined;
}
