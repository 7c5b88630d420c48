// Cookies confined to the route whose upstream set them. All routes of a host share one
// cookie jar in the browser, so without this any upstream could set a cookie every other
// route receives (session fixation, a Path=/ cookie shadowing another route's), and read
// every other route's cookies from the Cookie header. Each Set-Cookie name gets the route's
// marker ("<route>.", route names cannot hold a dot, so the first dot ends it) and a Path
// under the route prefix; the Cookie header sent upstream carries only the cookies with this
// route's marker, marker removed, so the upstream sees the names it set.
//
// Parsed by hand: fastify brings the `cookie` package, but it is not a dependency of ours,
// and it parses Cookie headers into a map (one value per name, decoded), while this must
// keep every pair byte for byte, split the way browsers split (RFC 6265 §5.2: at the first
// ';' and the first '=', no quoting), and refuse what browsers would read differently.
import { publicPathFor, underPath, type PathMapping } from './location.ts';

export interface CookieScope {
  /** "<route>.": what this route's cookie names start with (after a __Host-/__Secure- prefix). */
  readonly marker: string;
  readonly mapping: PathMapping;
  /** Lower-case response.cookieDomain: the one Domain (or a name under it) a cookie may keep. */
  readonly domain: string | undefined;
}

/** A Set-Cookie the gateway drops: what browsers would read in more than one way, or not at all. */
export interface MalformedCookie {
  readonly malformed: string;
}

// RFC 6265bis §5.6 step 1: a cookie with a control character other than HTAB is ignored.
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;
const WSP_EDGES = /^[ \t]+|[ \t]+$/g;
const trimWsp = (s: string): string => s.replace(WSP_EDGES, '');

/**
 * Length of a leading __Host- or __Secure- prefix (compared case-insensitively, as browsers do
 * since RFC 6265bis draft 14), else 0. The marker goes after it: the browser enforces the
 * prefix's rules only when it starts the name.
 */
function namePrefixLength(name: string): number {
  if (name.charCodeAt(0) !== 95 || name.charCodeAt(1) !== 95) return 0;
  const head = name.slice(0, 9).toLowerCase();
  if (head.startsWith('__host-')) return 7;
  if (head === '__secure-') return 9;
  return 0;
}

/**
 * One Set-Cookie value confined to the route: name marked, Path under the route prefix (the
 * upstream's Path mapped to its public path when it lies there, else the prefix itself),
 * Domain kept only when it is `scope.domain` or under it. A __Host- cookie keeps Path=/ and
 * no Domain (the browser refuses it otherwise); its marker alone scopes it. Other attributes
 * pass as they are. `basePath` is the base path of the upstream that answered.
 */
export function scopeSetCookie(value: string, scope: CookieScope, basePath: string): string | MalformedCookie {
  if (CONTROL.test(value)) return { malformed: 'control character' };
  const semi = value.indexOf(';');
  const pair = semi === -1 ? value : value.slice(0, semi);
  const eq = pair.indexOf('=');
  if (eq === -1) return { malformed: 'no "=" in the name-value pair' };
  const name = trimWsp(pair.slice(0, eq));
  if (name === '') return { malformed: 'empty name' };
  const prefixLength = namePrefixLength(name);
  const hostOnly = prefixLength === 7;
  let path: string | undefined;
  let domain: string | undefined;
  const kept: string[] = [];
  if (semi !== -1) {
    for (const raw of value.slice(semi + 1).split(';')) {
      const attribute = trimWsp(raw);
      if (attribute === '') continue;
      const aeq = attribute.indexOf('=');
      const key = trimWsp(aeq === -1 ? attribute : attribute.slice(0, aeq)).toLowerCase();
      const attributeValue = aeq === -1 ? '' : trimWsp(attribute.slice(aeq + 1));
      // RFC 6265 §5.3: of repeated attributes the last one counts.
      if (key === 'path') path = attributeValue;
      else if (key === 'domain') domain = attributeValue;
      else kept.push(attribute);
    }
  }
  const marked = name.slice(0, prefixLength) + scope.marker + name.slice(prefixLength);
  let out = `${marked}=${trimWsp(pair.slice(eq + 1))}`;
  for (const attribute of kept) out += `; ${attribute}`;
  if (!hostOnly && domain !== undefined && domainAllowed(domain, scope.domain)) out += `; Domain=${domain}`;
  return `${out}; Path=${hostOnly ? '/' : cookiePath(path, scope.mapping, basePath)}`;
}

function cookiePath(upstreamPath: string | undefined, mapping: PathMapping, basePath: string): string {
  // RFC 6265 §5.2.4: an empty or relative Path means the default path, which the browser
  // would compute from the public URL: set it explicitly instead.
  if (upstreamPath === undefined || upstreamPath.charCodeAt(0) !== 47) return mapping.prefix;
  const mapped = publicPathFor(mapping, upstreamPath, basePath);
  // The upstream's root is "/app/" in public; "/app" also covers a request for "/app" itself.
  if (mapped === undefined || mapped === `${mapping.prefix}/` || !underPath(mapped, mapping.prefix)) return mapping.prefix;
  return mapped;
}

function domainAllowed(domain: string, allowed: string | undefined): boolean {
  if (allowed === undefined) return false;
  // RFC 6265 §5.2.3: a leading dot is ignored.
  const d = (domain.charCodeAt(0) === 46 ? domain.slice(1) : domain).toLowerCase();
  return d === allowed || d.endsWith(`.${allowed}`);
}

/**
 * The Cookie header for this route's upstream: only the pairs whose name carries `marker`
 * (after an optional __Host-/__Secure- prefix), with the marker removed, in their order;
 * undefined when none remain. Other routes' cookies and cookies a page script set without the
 * marker never reach this upstream.
 */
export function scopedCookieHeader(header: string, marker: string): string | undefined {
  let out: string | undefined;
  for (const raw of header.split(';')) {
    const pair = trimWsp(raw);
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const prefixLength = namePrefixLength(pair);
    if (!pair.startsWith(marker, prefixLength)) continue;
    const restored = pair.slice(0, prefixLength) + pair.slice(prefixLength + marker.length);
    // "<route>.=x" had no name of its own.
    if (restored.charCodeAt(prefixLength) === 61 /* = */) continue;
    out = out === undefined ? restored : `${out}; ${restored}`;
  }
  return out;
}
