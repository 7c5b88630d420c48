// Upstream paths mapped back to public ones: the inverse of how the route stage builds the
// upstream path (pipeline/route.ts upstreamPathFor: base path + the path, its prefix maybe
// stripped). Location and Content-Location naming the upstream's own address are rewritten
// with it, like nginx's `proxy_redirect default`: an internal host, address or port in a
// redirect tells every client what sits behind the gateway, and a client following it either
// fails or reaches the upstream without the gateway. Cookie paths (cookies.ts) use it too.
// Plain values in, plain values out: the request context stays in headers.ts.

/** How a route turns a public path into an upstream path, to invert it. */
export interface PathMapping {
  /** The route's canonical pathPrefix ("/api", or "/"). */
  readonly prefix: string;
  /** The prefix is removed before forwarding (never for "/", which has nothing to remove). */
  readonly strips: boolean;
}

/** An upstream a route's requests go to. */
export interface UpstreamBase {
  /** As URL.origin spells it: lower-case host, default port left out. */
  readonly origin: string;
  /** Path of the upstream URL without its trailing slash; "" for none. */
  readonly basePath: string;
}

/** Segment-aware, as route matching is (pipeline/route.ts pathHasPrefix): "/a" covers "/a" and "/a/x", never "/ax". */
export function underPath(path: string, prefix: string): boolean {
  if (prefix === '' || prefix === '/') return path.charCodeAt(0) === 47;
  return path.startsWith(prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */);
}

/**
 * The public path the gateway would forward to `upstreamPath` on this upstream; undefined when
 * the path lies outside the upstream's base path (no public path leads there).
 */
export function publicPathFor(mapping: PathMapping, upstreamPath: string, basePath: string): string | undefined {
  if (!underPath(upstreamPath, basePath)) return undefined;
  const rest = upstreamPath.length === basePath.length ? '/' : upstreamPath.slice(basePath.length);
  return mapping.strips ? mapping.prefix + rest : rest;
}

/** Does a path-absolute reference from this upstream need mapping? Only when public and upstream paths differ. */
export function pathsDiffer(mapping: PathMapping, basePath: string): boolean {
  return mapping.strips || basePath !== '';
}

const ABSOLUTE = /^https?:/i;

/** Splits "/p?q#f" into the path and what follows it (kept as it is). */
function splitPath(ref: string): [string, string] {
  let end = ref.length;
  const q = ref.indexOf('?');
  if (q !== -1) end = q;
  const h = ref.indexOf('#');
  if (h !== -1 && h < end) end = h;
  return [ref.slice(0, end), ref.slice(end)];
}

/**
 * A Location or Content-Location value as the client should see it. `active` is the upstream
 * the request went to (a policy obligation may have named another than the route's own,
 * `own`); a URL naming either is mapped onto `publicOrigin`. A path-absolute reference ("/x")
 * is taken to be on the active upstream and mapped when the upstream's paths differ from the
 * public ones. Anything else (other hosts, relative references, paths outside the base path,
 * values that are not URLs) is left as it is. Query and fragment are kept.
 */
export function rewriteLocation(value: string, mapping: PathMapping, publicOrigin: string, active: UpstreamBase, own: UpstreamBase): string {
  if (value.charCodeAt(0) === 47 /* / */ && value.charCodeAt(1) !== 47) {
    if (!pathsDiffer(mapping, active.basePath)) return value;
    const [path, suffix] = splitPath(value);
    const mapped = publicPathFor(mapping, path, active.basePath);
    return mapped === undefined ? value : mapped + suffix;
  }
  // "//host/x" takes the scheme of the response it came in, the upstream's.
  const schemeRelative = value.startsWith('//');
  if (!schemeRelative && !ABSOLUTE.test(value)) return value;
  let url: URL;
  try {
    url = new URL(value, active.origin);
  } catch {
    return value;
  }
  // URL.origin is the normalised form on both sides: host case, default ports ("http://h:80" is "http://h").
  for (const upstream of active === own ? [active] : [active, own]) {
    if (url.origin !== upstream.origin) continue;
    const mapped = publicPathFor(mapping, url.pathname, upstream.basePath);
    if (mapped !== undefined) return publicOrigin + mapped + url.search + url.hash;
  }
  return value;
}
