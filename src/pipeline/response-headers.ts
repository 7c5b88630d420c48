// What a route's upstream may say to clients, compiled once per route (config/compile.ts)
// into one map from header name to what happens to it, so that the response path does one
// lookup per header whatever the route has turned on. Removed by default: banners naming
// the upstream's software, headers whose effect reaches past the route to the whole host
// (one route's upstream must not turn HSTS off, open CORS with credentials or clear the
// site's data for every route), and obsolete pinning headers. Rewritten by default:
// Location/Content-Location naming the upstream (location.ts) and Set-Cookie (cookies.ts).
import type { RequestContext } from './context.ts';
import { scopeSetCookie, type CookieScope } from '../upstream/cookies.ts';
import { NEVER_CROSSES } from './upstream-headers.ts';
import { rewriteLocation, type PathMapping, type UpstreamBase } from '../upstream/location.ts';

/** The routes[].response.ownHostHeaders groups (config/schema.ts HOST_WIDE_HEADER_GROUPS) and the headers in each. */
export const HOST_WIDE_HEADERS = {
  // RFC 6797: a max-age=0 from any route turns HSTS off for the whole host.
  'strict-transport-security': ['strict-transport-security'],
  // Fetch standard §3.2: Access-Control-* from any route lets other origins read that route
  // with the user's cookies; every name with the prefix is in the group (CORS_PREFIX).
  cors: [],
  // RFC 7838: sends the whole origin's traffic to another host or port.
  'alt-svc': ['alt-svc'],
  // W3C Clear Site Data: wipes the origin's cookies and storage, every route's.
  'clear-site-data': ['clear-site-data'],
  // W3C Reporting, Network Error Logging: where the browser reports about the whole origin.
  reporting: ['nel', 'report-to', 'reporting-endpoints'],
  // W3C Service Workers §6.3: widens the scope a service worker may control.
  'service-worker-allowed': ['service-worker-allowed'],
} as const satisfies Record<string, readonly string[]>;

export type HostWideGroup = keyof typeof HOST_WIDE_HEADERS;

const CORS_PREFIX = 'access-control-';

/** Dropped from every response: obsolete and dangerous (a bad pin locks users out of the host for its max-age). */
export const ALWAYS_DROPPED = ['public-key-pins', 'public-key-pins-report-only', 'expect-ct'] as const;

/** Names `setHeaders` may not set: they frame the message or belong to one connection, or are the gateway's own. */
export const NOT_SETTABLE: ReadonlySet<string> = new Set([...NEVER_CROSSES, 'content-length', 'x-request-id']);

type HeaderValue = string | string[];
/** A rewrite of one header's value(s); undefined removes the header. */
export type HeaderRewrite = (value: HeaderValue, ctx: RequestContext) => HeaderValue | undefined;
/** What happens to an upstream response header by this name; names without a rule pass unchanged. */
export type HeaderRule = 'drop' | HeaderRewrite;

export interface ResponsePolicy {
  /** Lower-case name → rule. */
  readonly rules: ReadonlyMap<string, HeaderRule>;
  /** Names starting with it are dropped: "access-control-" unless the route owns `cors`. */
  readonly dropPrefix: string | undefined;
  /** The gateway's own headers for this route's responses, set last; undefined when none. */
  readonly setHeaders: Readonly<Record<string, string>> | undefined;
  /** An upstream 5xx reaches the client as the gateway's problem document. */
  readonly replaceErrorBodies: boolean;
  /** "<route>.": only cookies so named reach the upstream; undefined when cookies pass unchanged. */
  readonly cookieMarker: string | undefined;
}

/** routes[].response as the schema gives it (defaults filled). */
export interface RouteResponseSettings {
  readonly banners: 'strip' | 'pass';
  readonly errorBodies: 'replace' | 'pass';
  readonly redirects: 'rewrite' | 'pass';
  readonly cookies: 'scoped' | 'pass';
  readonly cookieDomain?: string;
  readonly ownHostHeaders: readonly HostWideGroup[];
  readonly setHeaders: Readonly<Record<string, string>>;
}

export interface ResponsePolicyInput {
  readonly routeName: string;
  /** How the route maps public paths onto upstream paths. */
  readonly mapping: PathMapping;
  /** The route's upstream: its preferred endpoint. */
  readonly upstream: UpstreamBase;
  /**
   * Every endpoint of every upstream by upstream name (the route's, and those a policy
   * obligation may name): a Location naming any endpoint of the upstream the request went
   * to, or of the route's own, is the upstream's own address, whichever endpoint answered.
   */
  readonly endpoints?: { readonly routeUpstream: string; readonly of: ReadonlyMap<string, readonly UpstreamBase[]> };
  readonly response: RouteResponseSettings;
  /** server.bannerHeaders. */
  readonly bannerHeaders: readonly string[];
  /** A Set-Cookie was dropped as malformed (logged at debug: an upstream bug, not an attack on the gateway). */
  readonly onMalformedCookie: (ctx: RequestContext, reason: string) => void;
}

/**
 * A base path nothing lies under: for an upstream whose base path cannot be told (see
 * activeUpstream), so that its Location is left alone and its cookies get the route prefix.
 */
const UNKNOWN_BASE = '\u0000';

/**
 * The endpoint this request went to (pipeline/proxy.ts sets ctx.upstreamOrigin and the
 * upstream path from the endpoint the guard chose, of the route's upstream or of the one a
 * policy obligation named); its base path is what the upstream path holds before the part
 * taken from the public path.
 */
function activeUpstream(ctx: RequestContext, own: UpstreamBase, mapping: PathMapping): UpstreamBase {
  const origin = ctx.upstreamOrigin;
  if (origin === undefined) return own;
  const upstreamPath = ctx.upstreamPath ?? '';
  const rest = mapping.strips ? ctx.path.slice(mapping.prefix.length) || '/' : ctx.path;
  const basePath = upstreamPath.endsWith(rest) ? upstreamPath.slice(0, upstreamPath.length - rest.length) : UNKNOWN_BASE;
  return { origin, basePath };
}

function locationRule(mapping: PathMapping, own: UpstreamBase, endpoints: ResponsePolicyInput['endpoints']): HeaderRewrite {
  return (value, ctx) => {
    const active = activeUpstream(ctx, own, mapping);
    const one = (v: string): string => {
      const out = rewriteLocation(v, mapping, ctx.publicOrigin, active, own);
      return out === v && endpoints !== undefined ? siblingRewrite(v, ctx, mapping, endpoints) : out;
    };
    return typeof value === 'string' ? one(value) : value.map(one);
  };
}

/**
 * A path-absolute reference belongs to the endpoint that answered (rewritten before this); an
 * absolute one may name a sibling endpoint (the central region answering for the local one,
 * a redirect to the other replica): each is the upstream's own address too.
 */
function siblingRewrite(v: string, ctx: RequestContext, mapping: PathMapping, endpoints: NonNullable<ResponsePolicyInput['endpoints']>): string {
  if (v.charCodeAt(0) === 47 /* / */ && v.charCodeAt(1) !== 47) return v;
  const names = ctx.upstreamName === undefined || ctx.upstreamName === endpoints.routeUpstream ? [endpoints.routeUpstream] : [ctx.upstreamName, endpoints.routeUpstream];
  for (const name of names) {
    for (const base of endpoints.of.get(name) ?? []) {
      const mapped = rewriteLocation(v, mapping, ctx.publicOrigin, base, base);
      if (mapped !== v) return mapped;
    }
  }
  return v;
}

function setCookieRule(scope: CookieScope, own: UpstreamBase, onMalformed: ResponsePolicyInput['onMalformedCookie']): HeaderRewrite {
  return (value, ctx) => {
    const basePath = activeUpstream(ctx, own, scope.mapping).basePath;
    const out: string[] = [];
    for (const cookie of typeof value === 'string' ? [value] : value) {
      const scoped = scopeSetCookie(cookie, scope, basePath);
      if (typeof scoped === 'string') out.push(scoped);
      else onMalformed(ctx, scoped.malformed);
    }
    return out.length === 0 ? undefined : out;
  };
}

export function compileResponsePolicy(input: ResponsePolicyInput): ResponsePolicy {
  const { response, mapping, upstream } = input;
  const rules = new Map<string, HeaderRule>();
  if (response.redirects === 'rewrite') {
    const rewrite = locationRule(mapping, upstream, input.endpoints);
    rules.set('location', rewrite);
    rules.set('content-location', rewrite);
  }
  let cookieMarker: string | undefined;
  if (response.cookies === 'scoped') {
    cookieMarker = `${input.routeName}.`;
    const scope: CookieScope = { marker: cookieMarker, mapping, domain: response.cookieDomain?.toLowerCase() };
    rules.set('set-cookie', setCookieRule(scope, upstream, input.onMalformedCookie));
  }
  // Drops after rewrites: a name on both lists (a banner list naming set-cookie) is dropped.
  const drop = (name: string) => rules.set(name.toLowerCase(), 'drop');
  for (const name of NEVER_CROSSES) drop(name);
  for (const name of ALWAYS_DROPPED) drop(name);
  const owned = new Set(response.ownHostHeaders);
  for (const group of Object.keys(HOST_WIDE_HEADERS) as HostWideGroup[]) {
    if (!owned.has(group)) for (const name of HOST_WIDE_HEADERS[group]) drop(name);
  }
  if (response.banners === 'strip') for (const name of input.bannerHeaders) drop(name);

  let setHeaders: Record<string, string> | undefined;
  for (const [name, value] of Object.entries(response.setHeaders)) {
    const lower = name.toLowerCase();
    if (NOT_SETTABLE.has(lower)) throw new Error(`route ${input.routeName}: response.setHeaders cannot set ${name} (it frames the message, belongs to one connection, or is the gateway's own)`);
    (setHeaders ??= {})[lower] = value;
  }
  return Object.freeze({
    rules,
    dropPrefix: owned.has('cors') ? undefined : CORS_PREFIX,
    setHeaders: setHeaders && Object.freeze(setHeaders),
    replaceErrorBodies: response.errorBodies === 'replace',
    cookieMarker,
  });
}

// RFC 9110 §10.2.3: delay-seconds or an HTTP-date; anything else is not repeated to clients.
const DELAY_SECONDS = /^\d{1,9}$/;
const HTTP_DATE = /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/**
 * Headers of the problem document that replaces an upstream 5xx: none of the upstream's
 * (its entity headers describe the body that was thrown away, its cookies come from a
 * request that failed), except a 503's Retry-After, which tells clients when to come back;
 * then the route's own setHeaders.
 */
export function errorResponseHeaders(status: number, upstream: Readonly<Record<string, HeaderValue | undefined>>, policy: ResponsePolicy): Record<string, string> | undefined {
  let out: Record<string, string> | undefined;
  if (status === 503) {
    const raw = upstream['retry-after'];
    const retryAfter = Array.isArray(raw) ? raw[0] : raw;
    if (retryAfter !== undefined && (DELAY_SECONDS.test(retryAfter) || HTTP_DATE.test(retryAfter))) out = { 'retry-after': retryAfter };
  }
  return policy.setHeaders === undefined ? out : { ...out, ...policy.setHeaders };
}
