// Rules a JSON Schema cannot express: uniqueness across array items, references between
// sections, and "exactly one of" with readable messages. Runs on a schema-valid Config and
// returns paths rather than positions, so it stays independent of YAML; load.ts maps
// each path back to a line and column.
import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { resolve } from 'node:path';
import proxyaddr from 'proxy-addr';
import type { Config, IssuerConfig, RouteConfig } from './schema.ts';
import { isCredentialHeader } from '../policy/record-limits.ts';
import { unforwardable } from '../upstream/header-deny-list.ts';
import { NOT_SETTABLE } from '../pipeline/response-headers.ts';
import { canonicalPrefix } from '../core/paths.ts';

export type ConfigPath = (string | number)[];
export interface SemanticIssue {
  path: ConfigPath;
  message: string;
}

const KEY_SOURCES = ['jwksUrl', 'jwksFile', 'secret'] as const;
const isHmac = (alg: string) => alg.startsWith('HS');

/** `baseDir` is where relative file references resolve: the config file's directory. */
export function checkSemantics(config: Config, baseDir: string): SemanticIssue[] {
  return [
    ...config.identity.issuers.flatMap((issuer, i) => keyFile(issuer, baseDir, ['identity', 'issuers', i, 'jwksFile'])),
    ...duplicateNames(config.identity.issuers, ['identity', 'issuers'], 'issuer'),
    ...duplicateNames(config.routes, ['routes'], 'route'),
    ...config.identity.issuers.flatMap((issuer, i) => issuerKeys(issuer, ['identity', 'issuers', i])),
    ...routeIssuers(config),
    ...duplicateMatches(config.routes),
    ...trustedProxies(config.server.trustedProxies),
    ...readableFiles(config, baseDir),
    ...recordedHeaders(config),
    ...forwardHeaders(config),
    ...settableHeaders(config.routes),
    ...publicOrigins(config.server.publicOrigins),
    ...upstreamReferences(config),
    ...limitReferences(config),
    ...('redis' in config.devices.registry && config.redis === undefined
      ? [{ path: ['devices', 'registry', 'redis'], message: 'a Redis device registry needs a top-level redis section' }]
      : []),
  ];
}

/** A route's upstream is a URL or the name of an entry in upstreams; endpoint names are unique per upstream. */
function upstreamReferences(config: Config): SemanticIssue[] {
  const names = Object.keys(config.upstreams);
  const issues: SemanticIssue[] = config.routes.flatMap((route, i) =>
    /^https?:\/\//.test(route.upstream) || Object.hasOwn(config.upstreams, route.upstream)
      ? []
      : [{ path: ['routes', i, 'upstream'], message: `unknown upstream "${route.upstream}" (${names.length === 0 ? 'the upstreams section defines none' : `defined: ${names.join(', ')}`})` }],
  );
  for (const [name, upstream] of Object.entries(config.upstreams)) {
    if (typeof upstream !== 'string') issues.push(...duplicateNames(upstream.endpoints, ['upstreams', name, 'endpoints'], 'endpoint'));
  }
  return issues;
}

/** Tiers named by routes exist; a Redis store has a Redis to talk to. */
function limitReferences(config: Config): SemanticIssue[] {
  const tiers = Object.keys(config.limits.tiers);
  const issues: SemanticIssue[] = config.routes.flatMap((route, i) =>
    route.limits.flatMap((tier, j) =>
      Object.hasOwn(config.limits.tiers, tier)
        ? []
        : [{ path: ['routes', i, 'limits', j], message: `unknown rate-limit tier "${tier}" (${tiers.length === 0 ? 'limits.tiers defines none' : `defined: ${tiers.join(', ')}`})` }],
    ),
  );
  // A public route has no subject, device or claims: a tier keyed by one would be one bucket
  // shared by every client there, so one client could spend everyone's quota.
  config.routes.forEach((route, i) => {
    if (!route.public) return;
    route.limits.forEach((name, j) => {
      const identityKeyed = config.limits.tiers[name]?.key.filter((d) => d === 'subject' || d === 'device' || d.startsWith('claim:')) ?? [];
      if (identityKeyed.length > 0) {
        issues.push({ path: ['routes', i, 'limits', j], message: `tier "${name}" is keyed by ${identityKeyed.join(', ')}, which a public route does not have; key it by ip (or route)` });
      }
    });
  });
  const redis = config.limits.redis;
  if (redis !== undefined && (redis.url === undefined) === (redis.cluster === undefined)) {
    issues.push({ path: ['limits', 'redis'], message: 'set exactly one of url and cluster' });
  }
  if (config.limits.store === 'redis' && redis === undefined && config.redis === undefined) {
    issues.push({ path: ['limits', 'store'], message: 'a redis store needs limits.redis or a top-level redis section' });
  }
  return issues;
}

/**
 * Why a host name the schema's pattern refused is wrong, in words (load.ts asks for every
 * value a pattern refused; undefined keeps the validator's own wording). A host entry that is
 * a typo would otherwise be a route that never matches, so the schema refuses it, and the
 * common typos get a message that says what to write instead. Upper case is not one of them:
 * host names compare case-insensitively (RFC 4343) and are lower-cased when compiled.
 */
export function explainRefusedPattern(path: ConfigPath, value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const [a, , b, c] = path;
  if (a === 'routes' && b === 'hosts' && path.length === 4) {
    return hostNameMistake(value, { what: 'hosts entries', port: 'put the port in server.publicOrigins', path: 'put the path in pathPrefix' });
  }
  if (a === 'server' && path[1] === 'admin' && b === 'hosts') {
    return hostNameMistake(value, { what: 'admin.hosts entries', port: 'the admin plane compares Host without its port', path: 'the admin plane has fixed paths' });
  }
  if (a === 'routes' && b === 'response' && c === 'cookieDomain') {
    return hostNameMistake(value, { what: 'cookieDomain values', port: 'a cookie Domain has none', path: 'a cookie Domain has none' });
  }
  return undefined;
}

function hostNameMistake(value: string, hint: { what: string; port: string; path: string }): string {
  const { what } = hint;
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(value)) return `${what} are host names, not URLs: leave out the scheme (and any port or path)`;
  if (isIPv6(value)) return `${what}: write an IPv6 address in brackets, as a Host header carries it ([::1])`;
  if (/:[0-9]*$/.test(value)) return `${what} have no port: ${hint.port}`;
  if (value.includes('/')) return `${what} have no path: ${hint.path}`;
  if (value.endsWith('.')) return `${what} have no trailing dot: write the name without it (a client's trailing dot is dropped before matching)`;
  if (value === '*') return `"*" alone is not a host name: leave hosts out to answer any host`;
  if (value.includes('*')) return `${what}: "*" only as the whole first label, as in "*.example.com"`;
  return `${what} are host names (letters, digits, "-" between dots; "*." in front for subdomains), IPv4 addresses or bracketed IPv6 addresses`;
}

/** A route may forward a denied header, never one the gateway writes or a hop-by-hop one. */
function forwardHeaders(config: Config): SemanticIssue[] {
  return config.routes.flatMap((route, i) =>
    route.forwardHeaders.flatMap((name, j) =>
      unforwardable([name], config.assertion.header).map((why) => ({ path: ['routes', i, 'forwardHeaders', j], message: `cannot forward ${why}` })),
    ),
  );
}

/** Each origin is scheme://host[:port], nothing more: it is compared with what clients send. */
/** response.setHeaders cannot set what frames the message, belongs to one connection, or is the gateway's own. */
function settableHeaders(routes: readonly RouteConfig[]): SemanticIssue[] {
  return routes.flatMap((route, i) =>
    Object.keys(route.response.setHeaders)
      .filter((name) => NOT_SETTABLE.has(name.toLowerCase()))
      .map((name) => ({
        path: ['routes', i, 'response', 'setHeaders', name],
        message: `cannot set ${name}: it frames the message, belongs to one connection, or is the gateway's own`,
      })),
  );
}

function publicOrigins(origins: readonly string[]): SemanticIssue[] {
  return origins.flatMap((origin, i) => {
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return [{ path: ['server', 'publicOrigins', i], message: `"${origin}" is not a URL` }];
    }
    if (url.origin === 'null' || url.username !== '' || url.password !== '' || url.pathname !== '/' || url.search !== '' || url.hash !== '' || origin.endsWith('/')) {
      return [{ path: ['server', 'publicOrigins', i], message: `"${origin}" must be an origin only: scheme://host[:port], no path, user or trailing slash` }];
    }
    return [];
  });
}

function duplicateNames(items: readonly { name: string }[], at: ConfigPath, what: string): SemanticIssue[] {
  const seen = new Map<string, number>();
  const issues: SemanticIssue[] = [];
  items.forEach(({ name }, i) => {
    const first = seen.get(name);
    if (first === undefined) seen.set(name, i);
    else issues.push({ path: [...at, i, 'name'], message: `duplicate ${what} name "${name}" (first used at index ${first})` });
  });
  return issues;
}

function issuerKeys(issuer: IssuerConfig, at: ConfigPath): SemanticIssue[] {
  const sources = KEY_SOURCES.filter((k) => issuer[k] !== undefined);
  if (sources.length !== 1) {
    const found = sources.length === 0 ? 'none' : sources.join(', ');
    return [{ path: at, message: `set exactly one of ${KEY_SOURCES.join(', ')} (found: ${found})` }];
  }
  // Mixing HMAC and public-key algorithms on one issuer is the classic algorithm-confusion
  // hole: a token signed with HS256 using the *public* key as the secret would verify.
  // So a secret admits only HS*, and a key set admits no HS*.
  const hasSecret = sources[0] === 'secret';
  return issuer.algorithms.flatMap((alg, j) =>
    isHmac(alg) === hasSecret
      ? []
      : [
          {
            path: [...at, 'algorithms', j],
            message: hasSecret
              ? `${alg} cannot be used with "secret"; a secret issuer accepts only HS256, HS384, HS512`
              : `${alg} needs "secret"; an issuer with jwksUrl or jwksFile accepts only asymmetric algorithms`,
          },
        ],
  );
}

function routeIssuers(config: Config): SemanticIssue[] {
  const known = config.identity.issuers.map((i) => i.name);
  return config.routes.flatMap((route, i) => {
    if (!route.public && known.length === 0) {
      return [
        {
          path: ['routes', i],
          message: `route "${route.name}" requires authentication but identity.issuers is empty; add an issuer or set public: true`,
        },
      ];
    }
    return (route.issuers ?? []).flatMap((name, j) =>
      known.includes(name)
        ? []
        : [{ path: ['routes', i, 'issuers', j], message: `unknown issuer "${name}" (configured: ${known.join(', ') || 'none'})` }],
    );
  });
}

// Two routes with the same hosts and prefix make the second unreachable, silently. Prefixes
// that differ only in case are refused too: a case-insensitive upstream cannot tell their
// paths apart, and the router refuses a path whose route would change if case were ignored
// (pipeline/route.ts), so one of them could only ever be reached by its exact spelling.
function duplicateMatches(routes: readonly RouteConfig[]): SemanticIssue[] {
  const seen = new Map<string, number>();
  const issues: SemanticIssue[] = [];
  routes.forEach((route, i) => {
    // Host names compare case-insensitively; no hosts (any host) is its own key, `null`.
    const hosts = route.hosts ? [...new Set(route.hosts.map((h) => h.toLowerCase()))].sort() : null;
    const prefix = canonicalPrefix(route.pathPrefix);
    const key = JSON.stringify([hosts, prefix.toLowerCase()]);
    const first = seen.get(key);
    if (first === undefined) seen.set(key, i);
    else {
      const other = routes[first]!;
      const sameCase = canonicalPrefix(other.pathPrefix) === prefix;
      issues.push({
        path: ['routes', i, 'pathPrefix'],
        message: sameCase
          ? `same hosts and pathPrefix as route "${other.name}"; one of them can never match`
          : `same hosts as route "${other.name}" and a pathPrefix that differs from its "${other.pathPrefix}" only in case; an upstream that ignores case cannot tell them apart`,
      });
    }
  });
  return issues;
}

// A decision line is read by more people than the gateway's secrets should be.
function recordedHeaders(config: Config): SemanticIssue[] {
  const names = config.policies?.decisionLog.headers ?? [];
  return names.flatMap((name, i) =>
    isCredentialHeader(name)
      ? [{ path: ['policies', 'decisionLog', 'headers', i], message: `"${name}" looks like a credential; decision lines never record credentials` }]
      : [],
  );
}

function trustedProxies(entries: readonly string[]): SemanticIssue[] {
  return entries.flatMap((entry, i) => {
    try {
      proxyaddr.compile(entry);
      return [];
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      return [{ path: ['server', 'trustedProxies', i], message: `not an IP, CIDR or loopback|linklocal|uniquelocal (${why})` }];
    }
  });
}

/** A key file that is missing or not a JWKS would only fail at the first request; say so now. */
function keyFile(issuer: IssuerConfig, baseDir: string, at: ConfigPath): SemanticIssue[] {
  // With more than one key source the issuer is already reported; one message is enough.
  if (issuer.jwksFile === undefined || issuer.jwksUrl !== undefined || issuer.secret !== undefined) return [];
  const file = resolve(baseDir, issuer.jwksFile);
  try {
    const jwks = JSON.parse(readFileSync(file, 'utf8')) as { keys?: unknown };
    if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) return [{ path: at, message: `${file} is not a JWKS with at least one key` }];
    return [];
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return [{ path: at, message: `cannot read JWKS file ${file} (${why})` }];
  }
}

/** Files the gateway will read at start: name the missing one now, with its line. */
function readableFiles(config: Config, baseDir: string): SemanticIssue[] {
  const files: [ConfigPath, string][] = [
    ...config.assertion.signingKeys.map((f, i): [ConfigPath, string] => [['assertion', 'signingKeys', i], f]),
  ];
  const tls = config.server.tls;
  if (tls !== undefined) {
    files.push([['server', 'tls', 'certFile'], tls.certFile], [['server', 'tls', 'keyFile'], tls.keyFile]);
    if (tls.clientCaFile !== undefined) files.push([['server', 'tls', 'clientCaFile'], tls.clientCaFile]);
  }
  return files.flatMap(([path, name]) => {
    try {
      readFileSync(resolve(baseDir, name));
      return [];
    } catch (err) {
      return [{ path, message: `cannot read ${resolve(baseDir, name)} (${(err as NodeJS.ErrnoException).code ?? 'error'})` }];
    }
  });
}
