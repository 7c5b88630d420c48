// Stage 2: host + longest path prefix → compiled route, and the path the upstream will see.
import type { CompiledRoute, RequestContext, Stage } from './context.ts';
import { BadPathError, RouteNotFoundError } from './errors.ts';

/** "/api/" and "/api" both mean the "/api" subtree; "/" means everything. */
export function canonicalPrefix(prefix: string): string {
  return prefix.length > 1 && prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
}

/** Segment-aware: "/api" covers "/api" and "/api/x", never "/apix". */
export function pathHasPrefix(path: string, prefix: string): boolean {
  if (prefix === '/') return true;
  return path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */);
}

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

export function matchRoute(sorted: readonly CompiledRoute[], host: string, path: string): CompiledRoute | undefined {
  for (const route of sorted) {
    if (pathHasPrefix(path, route.pathPrefix) && hostMatches(route.hosts, host)) return route;
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
  const sorted = sortRoutes(routes);
  return (ctx: RequestContext) => {
    const route = matchRoute(sorted, ctx.host, ctx.path);
    // `/admin;x/secret` is `/admin/secret` to Tomcat: if an upstream reading path parameters
    // that way would be served by another route's prefix, the route the gateway chose (and the
    // policy that decides on it) is not the one the upstream serves. Dot segments never get
    // here (hygiene refuses them), so this is the one way left for a path to change routes.
    if (ctx.path.includes(';') && matchRoute(sorted, ctx.host, withoutPathParameters(ctx.path)) !== route) {
      throw new BadPathError('path parameters cross a route prefix');
    }
    if (route === undefined) throw new RouteNotFoundError(`no route for ${ctx.host}${ctx.path}`);
    ctx.route = route;
    ctx.upstreamPath = upstreamPathFor(route, ctx.path);
  };
}
