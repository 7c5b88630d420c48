// Stage 2: host + longest path prefix → compiled route, and the path the upstream will see.
import type { CompiledRoute, RequestContext, Stage } from './context.ts';
import { BadPathError, RouteNotFoundError } from '../core/errors.ts';
import { pathHasPrefix } from '../core/paths.ts';

function hostMatches(patterns: readonly string[] | undefined, host: string): boolean {
  if (patterns === undefined) return true;
  for (const pattern of patterns) {
    if (pattern === '*' || pattern === host) return true;
    // "*.example.com" covers any depth of subdomain but not the apex, like a TLS wildcard would not.
    if (pattern.startsWith('*.') && host.endsWith(pattern.slice(1))) return true;
  }
  return false;
}

/** Routes ordered so that the first match is the most specific: longest prefix, then host-bound before any-host. */
export function sortRoutes(routes: readonly CompiledRoute[]): readonly CompiledRoute[] {
  return [...routes].sort(
    (a, b) => b.pathPrefix.length - a.pathPrefix.length || Number(b.hosts !== undefined) - Number(a.hosts !== undefined),
  );
}

interface RouteEntry {
  readonly route: CompiledRoute;
  /** What the path is compared with: the prefix, lower-cased on a case-insensitive route (which compares the lower-cased path). */
  readonly prefix: string;
  /** The prefix lower-cased: how an upstream that ignores case reads it. */
  readonly folded: string;
}

/** The routes as the router walks them, most specific first; built once per Runtime. */
export interface RouteTable {
  readonly entries: readonly RouteEntry[];
  /** No prefix has a letter: case never changes which route a path matches, and nothing is checked. */
  readonly caseBlind: boolean;
  /** A case-sensitive route's prefix has an upper-case letter: every path is checked, not only those with one. */
  readonly upperPrefix: boolean;
}

const hasLetter = (s: string): boolean => /[A-Za-z]/.test(s);

const hasUpperCase = (s: string): boolean => s.toLowerCase() !== s;

export function compileRouteTable(routes: readonly CompiledRoute[]): RouteTable {
  const entries = sortRoutes(routes).map((route) => {
    const folded = route.pathPrefix.toLowerCase();
    return Object.freeze({ route, prefix: route.caseInsensitive ? folded : route.pathPrefix, folded });
  });
  return Object.freeze({
    entries: Object.freeze(entries),
    caseBlind: !routes.some((r) => hasLetter(r.pathPrefix)),
    upperPrefix: routes.some((r) => !r.caseInsensitive && hasUpperCase(r.pathPrefix)),
  });
}

/**
 * The first (most specific) route for host and path. A case-insensitive route compares
 * `lowered`, the path in lower case; the others compare the path as it is. Paths are ASCII
 * here (hygiene refuses anything else raw), so lower-casing keeps every offset.
 */
export function matchRoute(table: RouteTable, host: string, path: string, lowered = path): CompiledRoute | undefined {
  const entries = table.entries;
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i]!;
    if (pathHasPrefix(entry.route.caseInsensitive ? lowered : path, entry.prefix) && hostMatches(entry.route.hosts, host)) return entry.route;
  }
  return undefined;
}

/** The route an upstream that ignores case would think the path is for: every prefix compared ignoring case. */
function matchIgnoringCase(table: RouteTable, host: string, lowered: string): CompiledRoute | undefined {
  for (const { route, folded } of table.entries) {
    if (pathHasPrefix(lowered, folded) && hostMatches(route.hosts, host)) return route;
  }
  return undefined;
}

export function upstreamPathFor(route: CompiledRoute, path: string, basePath = route.upstreamBasePath): string {
  let rest = path;
  if (route.stripPrefix && route.pathPrefix !== '/') {
    rest = path.slice(route.pathPrefix.length);
    if (rest === '') rest = '/';
  }
  return basePath + rest;
}

/**
 * The path as a servlet container routes it: each segment cut at its first ';' (RFC 3986 §3.3
 * path parameters, which Tomcat, Jetty and Spring drop before matching), empty segments merged.
 */
export function withoutPathParameters(path: string): string {
  let out = '';
  for (const seg of path.split('/')) {
    const semi = seg.indexOf(';');
    const name = semi === -1 ? seg : seg.slice(0, semi);
    if (name !== '') out += '/' + name;
  }
  return out === '' ? '/' : out + (path.endsWith('/') ? '/' : '');
}

// A linear scan over a handful of routes is cheaper than any index; revisit with hundreds.
export function createRouteStage(routes: readonly CompiledRoute[]): Stage {
  const table = compileRouteTable(routes);
  return (ctx: RequestContext) => {
    const path = ctx.path;
    // Paths are case-sensitive (RFC 3986 §6.2.2.1), but Express (by default), ASP.NET and IIS
    // read `/ADMIN/x` as `/admin/x`: sent to the route `/` matched, such an upstream serves
    // the `/admin` route's resource under another route's policy. So a path whose route would
    // change if case were ignored is refused, and a route whose upstream ignores case
    // (caseInsensitive) matches ignoring case. Only a path with an upper-case letter (or a
    // prefix with one) can differ: the rest pay one lower-casing of the path, which is also
    // the upper-case test (cheap: V8 hands back the same string when nothing changes).
    const lowered = table.caseBlind ? path : path.toLowerCase();
    const foldable = lowered !== path || table.upperPrefix;
    const route = matchRoute(table, ctx.host, path, lowered);
    // `/admin;x/secret` is `/admin/secret` to Tomcat: if an upstream reading path parameters
    // that way would be served by another route's prefix, the route the gateway chose (and the
    // policy that decides on it) is not the one the upstream serves. Dot segments never get
    // here (hygiene refuses them), so this is the one way left for a path to change routes.
    if (path.includes(';')) {
      const bare = withoutPathParameters(path);
      if (matchRoute(table, ctx.host, bare, bare.toLowerCase()) !== route) throw new BadPathError('path parameters cross a route prefix');
    }
    if (foldable && matchIgnoringCase(table, ctx.host, lowered) !== route) throw new BadPathError('path differs from a route prefix only in case');
    if (route === undefined) throw new RouteNotFoundError(`no route for ${ctx.host}${path}`);
    ctx.route = route;
    ctx.upstreamPath = upstreamPathFor(route, path);
  };
}
