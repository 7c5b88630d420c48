// The compiled policy set (what load.ts produces and evaluate.ts reads) and its index
// from a request to the policies that can apply to it. The index is why evaluation cost
// does not grow with policies for other routes: a request looks up its route, host, path
// prefixes and method in maps, and only the policies found there are evaluated.
import { canonicalPrefix, pathHasPrefix } from '../pipeline/route.ts';
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

/**
 * Each policy is filed under its most selective field (routes, then hosts, then path
 * prefixes, then methods; none: everywhere) and checked against the rest on lookup.
 */
export function createIndex(policies: readonly CompiledPolicy[]): PolicySet['candidates'] {
  const byRoute = new Map<string, CompiledPolicy[]>();
  const byHost = new Map<string, CompiledPolicy[]>();
  /** Keyed by ".example.com" for "*.example.com". */
  const byHostSuffix = new Map<string, CompiledPolicy[]>();
  const byPrefix = new Map<string, CompiledPolicy[]>();
  const byMethod = new Map<string, CompiledPolicy[]>();
  const everywhere: CompiledPolicy[] = [];

  for (const policy of policies) {
    const { routes, hosts, pathPrefixes, methods } = policy.appliesTo;
    if (routes) for (const r of routes) add(byRoute, r, policy);
    else if (hosts) for (const h of hosts) h.startsWith('*.') ? add(byHostSuffix, h.slice(1), policy) : add(byHost, h, policy);
    else if (pathPrefixes) for (const p of pathPrefixes) add(byPrefix, p, policy);
    else if (methods) for (const m of methods) add(byMethod, m, policy);
    else everywhere.push(policy);
  }

  return (request) => {
    const found = new Set<CompiledPolicy>();
    const collect = (list: CompiledPolicy[] | undefined) => {
      if (list) for (const p of list) found.add(p);
    };
    if (request.route !== undefined) collect(byRoute.get(request.route));
    collect(byHost.get(request.host));
    for (let i = request.host.indexOf('.'); i >= 0; i = request.host.indexOf('.', i + 1)) collect(byHostSuffix.get(request.host.slice(i)));
    // Every segment-boundary prefix of the path: "/", "/a", "/a/b" for "/a/b".
    collect(byPrefix.get('/'));
    for (let i = request.path.indexOf('/', 1); i > 0; i = request.path.indexOf('/', i + 1)) collect(byPrefix.get(request.path.slice(0, i)));
    collect(byPrefix.get(request.path));
    collect(byMethod.get(request.method));
    collect(everywhere);
    const out: CompiledPolicy[] = [];
    for (const p of found) if (applies(p.appliesTo, request)) out.push(p);
    return out.length > 1 ? out.sort((a, b) => a.order - b.order) : out;
  };
}
