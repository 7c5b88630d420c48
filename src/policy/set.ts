// The compiled policy set (what load.ts produces and evaluate.ts reads) and its index
// from a request to the policies that can apply to it. The index is why evaluation cost
// does not grow with policies for other routes: a request looks up its route, host, path
// prefixes and method in maps, and only the policies found there are evaluated.
import { canonicalPrefix, pathHasPrefix } from '../core/paths.ts';
import type { CompiledCondition } from './cel.ts';
import type { Effect, Mode, Obligations, StepUpRequirement } from './schema.ts';

export interface CompiledRule {
  readonly name: string;
  readonly effect: Effect;
  readonly condition: CompiledCondition;
  readonly stepUp?: StepUpRequirement;
  readonly obligations?: Obligations;
  /** Where the `when` condition is, for explanations. */
  readonly line: number;
  readonly col: number;
}

/** appliesTo, normalised: undefined = no constraint on that field. */
export interface CompiledScope {
  readonly routes?: ReadonlySet<string>;
  readonly hosts?: readonly string[];
  readonly pathPrefixes?: readonly string[];
  readonly methods?: ReadonlySet<string>;
}

export interface CompiledPolicy {
  readonly name: string;
  readonly description?: string;
  readonly file: string;
  readonly mode: Mode;
  readonly appliesTo: CompiledScope;
  readonly rules: readonly CompiledRule[];
  /** Position in the set (files by name, then order in the file): evaluation and reporting follow it. */
  readonly order: number;
}

export interface RequestKey {
  readonly route?: string;
  readonly host: string;
  readonly path: string;
  readonly method: string;
}

export interface PolicySet {
  /** sha256 of the files' names and contents, hex, 12 characters. */
  readonly hash: string;
  readonly files: readonly string[];
  readonly policies: readonly CompiledPolicy[];
  /** The policies that can apply to a request, in set order. */
  candidates(request: RequestKey): readonly CompiledPolicy[];
}

export function compileScope(appliesTo: {
  routes?: string[];
  hosts?: string[];
  pathPrefixes?: string[];
  methods?: string[];
}): CompiledScope {
  // "*" among the hosts means any host: the same as no host constraint.
  const hosts = appliesTo.hosts?.includes('*') ? undefined : appliesTo.hosts;
  return {
    ...(appliesTo.routes && { routes: new Set(appliesTo.routes) }),
    ...(hosts && { hosts }),
    ...(appliesTo.pathPrefixes && { pathPrefixes: appliesTo.pathPrefixes.map(canonicalPrefix) }),
    ...(appliesTo.methods && { methods: new Set(appliesTo.methods) }),
  };
}

// "*.example.com" covers any depth of subdomain but not the apex, as route hosts do.
const hostMatches = (pattern: string, host: string) => pattern === host || (pattern.startsWith('*.') && host.endsWith(pattern.slice(1)));

export function applies(scope: CompiledScope, request: RequestKey): boolean {
  if (scope.routes && (request.route === undefined || !scope.routes.has(request.route))) return false;
  if (scope.methods && !scope.methods.has(request.method)) return false;
  if (scope.hosts && !scope.hosts.some((h) => hostMatches(h, request.host))) return false;
  if (scope.pathPrefixes && !scope.pathPrefixes.some((p) => pathHasPrefix(request.path, p))) return false;
  return true;
}

function add<K>(map: Map<K, CompiledPolicy[]>, key: K, policy: CompiledPolicy) {
  const list = map.get(key);
  if (list) list.push(policy);
  else map.set(key, [policy]);
}

type Field = 'routes' | 'hosts' | 'pathPrefixes' | 'methods';
/** Most selective first: a route names one upstream service, a method many. */
const FIELDS: readonly Field[] = ['routes', 'hosts', 'pathPrefixes', 'methods'];

/** Adds the policies of one index level that apply to the request to `out`, each at least once, in any order. */
type Lookup = (request: RequestKey, out: CompiledPolicy[]) => void;

/** Buckets up to this size are scanned, not indexed further: a few scope checks cost less than the lookups. */
const SCAN = 8;

/**
 * The policies of a bucket, each checked against the fields of its scope that the way to
 * the bucket has not already matched (a policy filed under route "code" and found by
 * request.route "code" needs no route check; one that only names routes, none at all).
 */
function leaf(policies: readonly CompiledPolicy[], matched: readonly Field[]): Lookup {
  const check = policies.map((p) => FIELDS.some((f) => !matched.includes(f) && p.appliesTo[f] !== undefined));
  if (!check.includes(true)) {
    return (_request, out) => {
      for (const p of policies) out.push(p);
    };
  }
  return (request, out) => {
    for (let j = 0; j < policies.length; j++) {
      const p = policies[j]!;
      if (!check[j] || applies(p.appliesTo, request)) out.push(p);
    }
  };
}

/**
 * One level of the index over `fields`: each policy is filed under the first of them it
 * constrains and checked against the rest on lookup. A bucket larger than SCAN (say 200
 * policies for one route, each for another path prefix) is itself indexed over the
 * fields that follow, so that policies for other prefixes, hosts or methods of the same
 * route cost nothing either. `matched`: the fields the way here has matched.
 */
function level(policies: readonly CompiledPolicy[], fields: readonly Field[], matched: readonly Field[]): Lookup {
  if (policies.length <= SCAN || fields.length === 0) return leaf(policies, matched);
  const byRoute = new Map<string, CompiledPolicy[]>();
  const byHost = new Map<string, CompiledPolicy[]>();
  /** Keyed by ".example.com" for "*.example.com". */
  const byHostSuffix = new Map<string, CompiledPolicy[]>();
  const byPrefix = new Map<string, CompiledPolicy[]>();
  const byMethod = new Map<string, CompiledPolicy[]>();
  const elsewhere: CompiledPolicy[] = [];

  for (const policy of policies) {
    const field = fields.find((f) => policy.appliesTo[f] !== undefined);
    const { routes, hosts, pathPrefixes, methods } = policy.appliesTo;
    if (field === 'routes') for (const r of routes!) add(byRoute, r, policy);
    else if (field === 'hosts') for (const h of hosts!) h.startsWith('*.') ? add(byHostSuffix, h.slice(1), policy) : add(byHost, h, policy);
    else if (field === 'pathPrefixes') for (const p of pathPrefixes!) add(byPrefix, p, policy);
    else if (field === 'methods') for (const m of methods!) add(byMethod, m, policy);
    else elsewhere.push(policy);
  }

  // A key found means that field of the scope matched: exact route, host, method; a host
  // suffix at a label boundary; a path prefix at a segment boundary (pathHasPrefix).
  const sub = <K>(map: Map<K, CompiledPolicy[]>, field: Field): Map<K, Lookup> =>
    new Map([...map].map(([key, list]) => [key, level(list, fields.slice(fields.indexOf(field) + 1), [...matched, field])]));
  const routeIx = sub(byRoute, 'routes');
  const hostIx = sub(byHost, 'hosts');
  const suffixIx = sub(byHostSuffix, 'hosts');
  const prefixIx = sub(byPrefix, 'pathPrefixes');
  const methodIx = sub(byMethod, 'methods');
  const rest = leaf(elsewhere, matched);
  // Only slice the host or path at lengths some key has: each slice is a new string to hash.
  const suffixLengths = new Set([...byHostSuffix.keys()].map((k) => k.length));
  const prefixLengths = new Set([...byPrefix.keys()].map((k) => k.length));

  return (request, out) => {
    if (routeIx.size > 0 && request.route !== undefined) routeIx.get(request.route)?.(request, out);
    if (hostIx.size > 0) hostIx.get(request.host)?.(request, out);
    if (suffixIx.size > 0) {
      const { host } = request;
      for (let i = host.indexOf('.'); i >= 0; i = host.indexOf('.', i + 1)) {
        if (suffixLengths.has(host.length - i)) suffixIx.get(host.slice(i))?.(request, out);
      }
    }
    if (prefixIx.size > 0) {
      // Every segment-boundary prefix of the path: "/", "/a", "/a/b" for "/a/b".
      const { path } = request;
      prefixIx.get('/')?.(request, out);
      for (let i = path.indexOf('/', 1); i > 0; i = path.indexOf('/', i + 1)) {
        if (prefixLengths.has(i)) prefixIx.get(path.slice(0, i))?.(request, out);
      }
      if (path !== '/' && prefixLengths.has(path.length)) prefixIx.get(path)?.(request, out);
    }
    if (methodIx.size > 0) methodIx.get(request.method)?.(request, out);
    rest(request, out);
  };
}

/** The index: `level` over every field, then duplicates out and set order restored. */
export function createIndex(policies: readonly CompiledPolicy[]): PolicySet['candidates'] {
  const lookup = level(policies, FIELDS, []);
  return (request) => {
    const found: CompiledPolicy[] = [];
    lookup(request, found);
    let sorted = true;
    for (let j = 1; j < found.length; j++) {
      if (found[j]!.order <= found[j - 1]!.order) {
        sorted = false;
        break;
      }
    }
    if (sorted) return found;
    // A policy is found twice under two host suffixes or two path prefixes of its own,
    // and buckets come in field order, not set order.
    return [...new Set(found)].sort((a, b) => a.order - b.order);
  };
}
