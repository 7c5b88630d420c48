// Upstreams as the request path uses them: every route's upstream and every named one become
// a CompiledUpstream with its endpoints and protection settings, defaults applied. A route
// whose upstream is a URL gets an upstream of its own, named "route:<route>" (a colon cannot
// appear in a configured name, so the two never collide), with one endpoint "default".
import type { Config, RouteConfig, UpstreamConfig } from './schema.ts';
import type { GuardEndpoint, GuardUpstream } from '../pipeline/upstream-guard.ts';

/** The compiled forms are the upstream guard's own input types (pipeline/upstream-guard.ts). */
export type CompiledEndpoint = GuardEndpoint;
export type CompiledUpstream = GuardUpstream;

// The defaults the schema's descriptions state (schema.ts: Ajv fills none inside a union).
// maxInFlightPerPrincipal 64: above the benchmark's 50 connections from one token, below the
// 128 connections the gateway keeps per upstream origin, so one principal cannot hold them all.
// volumeThreshold 20: opossum's own 0 would open a breaker on the first failure.
export const UPSTREAM_DEFAULTS = Object.freeze({
  maxInFlight: 1024,
  maxInFlightPerPrincipal: 64,
  breaker: Object.freeze({ enabled: true, errorThresholdPercentage: 50, volumeThreshold: 20, rollingCountTimeoutMs: 10_000, rollingCountBuckets: 10, resetTimeoutMs: 10_000 }),
  retry: Object.freeze({ attempts: 0, budgetPercent: 20, minRetryConcurrency: 3 }),
});

const isUrl = (upstream: string): boolean => /^https?:\/\//.test(upstream);

/** The upstream a route sends to: its named one, or its own for a URL. */
export function routeUpstreamName(route: Pick<RouteConfig, 'name' | 'upstream'>): string {
  return isUrl(route.upstream) ? `route:${route.name}` : route.upstream;
}

function endpoint(upstream: string, name: string, url: string, priority: number): CompiledEndpoint {
  const parsed = new URL(url);
  return Object.freeze({ id: `${upstream}/${name}`, upstream, name, origin: parsed.origin, basePath: parsed.pathname.replace(/\/+$/, ''), priority });
}

function compileUpstream(name: string, config: string | UpstreamConfig): CompiledUpstream {
  const spec: UpstreamConfig = typeof config === 'string' ? { endpoints: [{ name: 'default', url: config }] } : config;
  return Object.freeze({
    name,
    endpoints: Object.freeze(spec.endpoints.map((e) => endpoint(name, e.name, e.url, e.priority ?? 0))),
    maxInFlight: spec.maxInFlight ?? UPSTREAM_DEFAULTS.maxInFlight,
    maxInFlightPerPrincipal: spec.maxInFlightPerPrincipal ?? UPSTREAM_DEFAULTS.maxInFlightPerPrincipal,
    breaker: Object.freeze({ ...UPSTREAM_DEFAULTS.breaker, ...spec.breaker }),
    retry: Object.freeze({ ...UPSTREAM_DEFAULTS.retry, ...spec.retry }),
  });
}

/** Every upstream a request can reach: the named ones, and one per route whose upstream is a URL. */
export function compileUpstreams(config: Pick<Config, 'upstreams' | 'routes'>): ReadonlyMap<string, CompiledUpstream> {
  const out = new Map<string, CompiledUpstream>();
  for (const [name, upstream] of Object.entries(config.upstreams)) out.set(name, compileUpstream(name, upstream));
  for (const route of config.routes) {
    if (isUrl(route.upstream)) out.set(routeUpstreamName(route), compileUpstream(routeUpstreamName(route), route.upstream));
  }
  return out;
}
