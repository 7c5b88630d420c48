// Policy files in, a compiled PolicySet out — or every problem, each with file:line:col.
// All or nothing: a set with one bad file is never returned in part, because a missing
// deny policy is an open door. The caller keeps serving its last good set (hot reload)
// or refuses to start.
//
// Phases per file: YAML → JSON Schema (Ajv) → rules a schema cannot say (step_up needs
// stepUp, obligations only on allow, known tiers and upstreams, unique rule names) → CEL
// parse and type check. Then across files: unique policy names.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Ajv } from 'ajv';
import type { ConfigIssue } from '../core/diagnostics.ts';
import { compileCondition } from './cel.ts';
import { PolicySchema, type PolicyDocument, type RuleDocument } from './schema.ts';
import { compileScope, createIndex, type CompiledPolicy, type CompiledRule, type PolicySet } from './set.ts';
import { parseValidated, type ParsedYaml, type Path } from './yaml.ts';

/** Names defined elsewhere (the gateway config) that obligations and appliesTo may refer to. */
export interface KnownNames {
  readonly tiers: ReadonlySet<string>;
  readonly upstreams: ReadonlySet<string>;
  /** When given, appliesTo.routes must name these: a misspelt route would make a deny policy silently apply nowhere. */
  readonly routes?: ReadonlySet<string>;
}

export interface PolicyFile {
  /** As shown in issues (a path); its base name is what the hash covers. */
  readonly file: string;
  readonly text: string;
}

/**
 * `unchecked` is set only when no known names were given (`known` undefined, as for the CLI
 * without --config): every reference to a route, tier or upstream that was not checked.
 */
export type PolicyLoadResult =
  | {
      ok: true;
      set: PolicySet;
      unchecked?: readonly ConfigIssue[];
      /** Conditions that load but may cost more than they should (advice.ts), each at its `when`. */
      warnings: readonly ConfigIssue[];
    }
  | { ok: false; issues: ConfigIssue[] };

// No type coercion and no ${VAR} interpolation, unlike the gateway config: what a policy
// means must be visible in the file that is reviewed, not depend on an instance's env.
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, verbose: true });
const validate = ajv.compile<PolicyDocument>(PolicySchema);

// Headers a policy must not set upstream: the gateway's own (the identity assertion
// x-zt-*, the request id, forwarding headers), credentials, and framing/hop-by-hop
// headers that could smuggle a second request.
const RESERVED_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'te',
  'trailer',
  'forwarded',
  'authorization',
  'cookie',
  'dpop',
  'x-request-id',
]);
const RESERVED_PREFIXES = ['x-zt-', 'x-forwarded-', 'proxy-'];

const isPolicyFile = (name: string) => /\.ya?ml$/.test(name) && !name.startsWith('.');

/**
 * Every `*.yaml` / `*.yml` directly in `dir` (not subdirectories such as tests/; not editors' dotfiles).
 * `known` undefined: route, tier and upstream names are accepted unchecked and listed in
 * the result's `unchecked` (tooling without a gateway config; the gateway always passes them).
 */
export function loadPolicyDir(dir: string, known: KnownNames | undefined, cache?: PolicyFileCache): PolicyLoadResult {
  return runToEnd(loadSteps(dir, known, cache));
}

/**
 * The same, for a gateway that serves meanwhile: it gives the event loop back every few
 * milliseconds of work, so requests keep flowing while a large set reads and compiles
 * (a thousand files recompiled after a config change take most of a second).
 */
export function loadPolicyDirAsync(dir: string, known: KnownNames | undefined, cache?: PolicyFileCache): Promise<PolicyLoadResult> {
  return runInSlices(loadSteps(dir, known, cache));
}

/** The same, from texts: for tests, and for sources other than a directory. */
export function compilePolicyFiles(files: readonly PolicyFile[], known: KnownNames | undefined, cache?: PolicyFileCache): PolicyLoadResult {
  return runToEnd(compileSteps(files, known, cache));
}

/**
 * A load is written once, as steps: it yields between pieces of work (a file read, a file
 * compiled, a run of cached files), and the caller decides whether to pause there.
 */
type Steps = Generator<void, PolicyLoadResult, void>;

function runToEnd(steps: Steps): PolicyLoadResult {
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
  }
}

/** Work between two turns of the event loop: a request waits at most about this long for a reload. */
const SLICE_MS = 4;
/** Cached files (a map lookup and a string compare each) between two looks at the clock. */
const CACHED_RUN = 64;

async function runInSlices(steps: Steps): Promise<PolicyLoadResult> {
  let sliceStart = performance.now();
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
    if (performance.now() - sliceStart >= SLICE_MS) {
      await new Promise((resolve) => setImmediate(resolve));
      sliceStart = performance.now();
    }
  }
}

function* loadSteps(dir: string, known: KnownNames | undefined, cache: PolicyFileCache | undefined): Steps {
  const at = (message: string): PolicyLoadResult => ({ ok: false, issues: [{ file: dir, line: 1, col: 1, field: '', message }] });
  let names: string[];
  try {
    names = readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isFile() && isPolicyFile(d.name))
      .map((d) => d.name);
  } catch (err) {
    return at(`cannot read directory (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  // An empty directory is a wrong mount or a half-synced checkout far more often than an
  // intent to deny everything; make it loud rather than a silent default deny.
  if (names.length === 0) return at('no policy files (*.yaml) in the directory');
  const files: PolicyFile[] = [];
  const issues: ConfigIssue[] = [];
  for (const name of names) {
    const file = join(dir, name);
    try {
      files.push({ file, text: readFileSync(file, 'utf8') });
    } catch (err) {
      issues.push({ file, line: 1, col: 1, field: '', message: `cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})` });
    }
    yield;
  }
  if (issues.length > 0) return { ok: false, issues };
  return yield* compileSteps(files, known, cache);
}

/** One file compiled on its own: everything but its place in the set and the cross-file name check. */
interface FileResult {
  readonly text: string;
  /** The policy's name and where it is written, when the file parsed. */
  readonly name?: { readonly value: string; readonly at: ConfigIssue };
  readonly policy?: CompiledPolicy;
  readonly issues: readonly ConfigIssue[];
  readonly unchecked: readonly ConfigIssue[];
  readonly warnings: readonly ConfigIssue[];
}

/**
 * Files compiled before, by path and the names they were checked against; an entry is used
 * only while the file's text is the same. With it, an edit to one file of a large set
 * recompiles that file (YAML, schema, CEL) and rebuilds only the index. The caller owns
 * it (one per gateway); each compile drops the entries of files no longer there.
 */
export type PolicyFileCache = Map<string, FileResult>;

function knownKey(known: KnownNames | undefined): string {
  if (known === undefined) return '';
  const list = (names: ReadonlySet<string> | undefined) => (names === undefined ? null : [...names].sort());
  // Digested: with a thousand routes the list is long, and it is part of every file's key.
  return createHash('sha256').update(JSON.stringify([list(known.tiers), list(known.upstreams), list(known.routes)])).digest('base64url');
}

function compileFile(file: string, text: string, known: KnownNames | undefined): FileResult {
  const unchecked: ConfigIssue[] = [];
  const warnings: ConfigIssue[] = [];
  try {
    const parsed = parseValidated(text, file, validate);
    if ('issues' in parsed) return { text, issues: parsed.issues, unchecked, warnings };
    const doc = parsed.data;
    const name = { value: doc.name, at: parsed.issue(['name'], '') };
    const result = compilePolicy(doc, file, parsed, known, unchecked, warnings, 0);
    if (Array.isArray(result)) return { text, name, issues: result, unchecked, warnings };
    return { text, name, policy: result, issues: [], unchecked, warnings };
  } catch (err) {
    // Belt and braces: no policy text may make a load throw (a hot reload runs in a
    // timer, where a throw ends the process). The file is refused like any bad file.
    const message = `the policy could not be compiled (${err instanceof Error ? err.message : String(err)})`;
    return { text, issues: [{ file, line: 1, col: 1, field: '', message }], unchecked, warnings };
  }
}

function* compileSteps(files: readonly PolicyFile[], known: KnownNames | undefined, cache: PolicyFileCache | undefined): Steps {
  const sorted = [...files].sort((a, b) => compare(basename(a.file), basename(b.file)) || compare(a.file, b.file));
  const issues: ConfigIssue[] = [];
  const unchecked: ConfigIssue[] = [];
  const warnings: ConfigIssue[] = [];
  const policies: CompiledPolicy[] = [];
  const firstByName = new Map<string, string>();

  const names = knownKey(known);
  const seen = new Set<string>();
  for (const { file, text } of sorted) {
    const key = `${file}\u0000${names}`;
    seen.add(key);
    let compiled = cache?.get(key);
    if (compiled?.text !== text) {
      compiled = compileFile(file, text, known);
      cache?.set(key, compiled);
      yield;
    } else if (seen.size % CACHED_RUN === 0) yield;
    issues.push(...compiled.issues);
    unchecked.push(...compiled.unchecked);
    warnings.push(...compiled.warnings);
    if (compiled.name === undefined) continue;
    const first = firstByName.get(compiled.name.value);
    if (first !== undefined) issues.push({ ...compiled.name.at, message: `duplicate policy name "${compiled.name.value}" (first defined in ${first})` });
    else firstByName.set(compiled.name.value, file);
    const policy = compiled.policy;
    if (policy !== undefined) policies.push(policy.order === policies.length ? policy : Object.freeze({ ...policy, order: policies.length }));
  }
  if (cache !== undefined) for (const key of cache.keys()) if (!seen.has(key)) cache.delete(key);

  if (issues.length > 0) return { ok: false, issues: sortIssues(issues) };
  const frozen = Object.freeze(policies);
  return {
    ok: true,
    set: Object.freeze({
      hash: hashFiles(sorted),
      files: Object.freeze(sorted.map((f) => f.file)),
      policies: frozen,
      candidates: createIndex(frozen),
    }),
    ...(known === undefined && { unchecked: Object.freeze(sortIssues(unchecked)) }),
    warnings: Object.freeze(sortIssues(warnings)),
  };
}

function compilePolicy(
  doc: PolicyDocument,
  file: string,
  parsed: ParsedYaml,
  known: KnownNames | undefined,
  unchecked: ConfigIssue[],
  warnings: ConfigIssue[],
  order: number,
): CompiledPolicy | ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  for (const [i, route] of (doc.appliesTo?.routes ?? []).entries()) {
    const at: Path = ['appliesTo', 'routes', i];
    if (known === undefined) unchecked.push(parsed.issue(at, notChecked('route', route)));
    else if (known.routes && !known.routes.has(route)) {
      issues.push(parsed.issue(at, `unknown route "${route}" (routes: ${[...known.routes].join(', ')})`));
    }
  }
  const ruleNames = new Map<string, number>();
  const rules: CompiledRule[] = [];
  doc.rules.forEach((rule, i) => {
    const at: Path = ['rules', i];
    const earlier = ruleNames.get(rule.name);
    if (earlier !== undefined) issues.push(parsed.issue([...at, 'name'], `duplicate rule name "${rule.name}" (first used by rules[${earlier}])`));
    else ruleNames.set(rule.name, i);

    issues.push(...ruleIssues(rule, at, parsed, known, unchecked));

    const where = parsed.issue([...at, 'when'], '');
    const compiled = compileCondition(rule.when);
    if (!compiled.ok) {
      for (const p of compiled.problems) {
        issues.push({ ...where, message: `CEL ${p.kind} error at ${p.line}:${p.col} of the condition: ${p.message}` });
      }
      return;
    }
    for (const w of compiled.warnings) warnings.push({ ...where, message: `at ${w.line}:${w.col} of the condition: ${w.message}` });
    rules.push(
      Object.freeze({
        name: rule.name,
        effect: rule.effect,
        condition: compiled.condition,
        ...(rule.stepUp && { stepUp: Object.freeze(rule.stepUp) }),
        ...(rule.obligations && { obligations: Object.freeze(rule.obligations) }),
        line: where.line,
        col: where.col,
      }),
    );
  });
  if (issues.length > 0) return issues;
  return Object.freeze({
    name: doc.name,
    ...(doc.description !== undefined && { description: doc.description }),
    file,
    mode: doc.mode,
    appliesTo: Object.freeze(compileScope(doc.appliesTo ?? {})),
    rules: Object.freeze(rules),
    order,
  });
}

/** What a schema cannot say about one rule: which fields go with which effect, and names defined elsewhere. */
function ruleIssues(rule: RuleDocument, at: Path, parsed: ParsedYaml, known: KnownNames | undefined, unchecked: ConfigIssue[]): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  if (rule.effect === 'step_up' && rule.stepUp === undefined) {
    out.push(parsed.issue([...at, 'effect'], 'a step_up rule needs stepUp.acrValues: what the client must re-authenticate with'));
  }
  if (rule.effect !== 'step_up' && rule.stepUp !== undefined) {
    out.push(parsed.issue([...at, 'stepUp'], `stepUp only applies to step_up rules (this one is ${rule.effect})`, true));
  }
  const o = rule.obligations;
  if (o !== undefined && rule.effect !== 'allow') {
    // Only allow rules decide what happens to a request that goes through.
    out.push(parsed.issue([...at, 'obligations'], `obligations only apply to allow rules (this one is ${rule.effect})`, true));
  }
  if (o?.rateLimitTier !== undefined) {
    const path: Path = [...at, 'obligations', 'rateLimitTier'];
    if (known === undefined) unchecked.push(parsed.issue(path, notChecked('rate-limit tier', o.rateLimitTier)));
    else if (!known.tiers.has(o.rateLimitTier)) out.push(parsed.issue(path, `unknown rate-limit tier "${o.rateLimitTier}"${listing(known.tiers)}`));
  }
  if (o?.upstream !== undefined) {
    const path: Path = [...at, 'obligations', 'upstream'];
    if (known === undefined) unchecked.push(parsed.issue(path, notChecked('upstream', o.upstream)));
    else if (!known.upstreams.has(o.upstream)) out.push(parsed.issue(path, `unknown upstream "${o.upstream}"${listing(known.upstreams)}`));
  }
  for (const name of Object.keys(o?.headers ?? {})) {
    if (RESERVED_HEADERS.has(name) || RESERVED_PREFIXES.some((p) => name.startsWith(p))) {
      out.push(parsed.issue([...at, 'obligations', 'headers', name], `"${name}" is set by the gateway or the client and cannot be an obligation`, true));
    }
  }
  return out;
}

const notChecked = (kind: string, name: string) => `${kind} "${name}" was not checked against the gateway config`;

const listing = (names: ReadonlySet<string>) => (names.size > 0 ? ` (known: ${[...names].join(', ')})` : ' (none are defined)');

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  return issues.sort((a, b) => compare(a.file, b.file) || a.line - b.line || a.col - b.col);
}

/** Names and contents in name order, length-prefixed so no two different sets hash alike. */
function hashFiles(files: readonly PolicyFile[]): string {
  const h = createHash('sha256');
  for (const { file, text } of files) {
    const name = basename(file);
    h.update(`${Buffer.byteLength(name)}:${name}${Buffer.byteLength(text)}:`).update(text);
  }
  return h.digest('hex').slice(0, 12);
}
