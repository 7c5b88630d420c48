// The configuration boundary: YAML text in, a schema-valid Config out, or a ConfigError
// listing every problem with its file:line:col. Four phases, each stopping on failure so
// one mistake does not cascade into noise: YAML syntax → ${VAR} interpolation → JSON
// Schema (Ajv, which also fills defaults) → cross-field rules (semantics.ts).
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import formats from 'ajv-formats';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { ConfigError, formatIssue, type ConfigIssue } from '../core/diagnostics.ts';
import { formatPath, keyName, offsetOf, toPath } from '../core/yaml-path.ts';
import { jsonSchema, type Config } from './schema.ts';
import { checkSemantics, explainRefusedPattern, type ConfigPath } from './semantics.ts';

export function loadConfigFile(
  file: string,
  env: NodeJS.ProcessEnv = process.env,
): { config: Config; dir: string; text: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError([{ file, line: 1, col: 1, field: '', message: `cannot read file (${why})` }], { cause: err });
  }
  // `dir` anchors relative paths in the config (jwksFile) to the file, not to the cwd.
  return { config: parseConfig(text, file, env), dir: dirname(resolve(file)), text };
}

// Compiled once: the schema is static and compiling is the expensive part of Ajv.
// coerceTypes lets `port: ${PORT:-8080}` (a string after interpolation) become a number.
const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: true, strict: true, verbose: true });
// ajv-formats is CommonJS; Node's default import is module.exports, which also carries `.default`.
formats.default(ajv);
const validate = ajv.compile<Config>(jsonSchema() as object);

/** A problem before it has a position: where to point, and which field to name. */
interface Finding {
  field: ConfigPath;
  at: ConfigPath;
  /** Point at the key of the last segment rather than its value (unknown fields). */
  atKey?: boolean;
  message: string;
}

export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv): Config {
  const lineCounter = new LineCounter();
  // uniqueKeys (the default, stated here because it matters): a duplicated key would
  // otherwise let the later value silently win, e.g. a second `public: true`.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const issue = (offset: number, field: ConfigPath, message: string): ConfigIssue => ({
    file,
    ...lineCounter.linePos(offset),
    field: formatPath(field),
    message,
  });
  const invalid = (issues: ConfigIssue[]) => new ConfigError(sortIssues(issues));
  const located = (findings: Finding[]) =>
    invalid(findings.map((f) => issue(offsetOf(doc, f.at, f.atKey ?? false), f.field, f.message)));

  // yaml recovers from a syntax error by calling everything after it unexpected, so only
  // the first error is worth reading; duplicate keys are independent and all kept.
  // Warnings (unknown tags and the like) count as errors: a config that means something
  // other than it says is worse than one that does not load.
  const syntax = [...doc.errors.filter((e, i) => i === 0 || e.code === 'DUPLICATE_KEY'), ...doc.warnings];
  if (syntax.length > 0) throw invalid(syntax.map((e) => issue(e.pos[0], [], e.message + flowHint(text, e.pos[0]))));

  const unresolved = interpolate(doc, env);
  if (unresolved.length > 0) throw located(unresolved);

  let data: unknown;
  try {
    data = doc.toJS();
  } catch (err) {
    // e.g. the alias-expansion limit that stops a "billion laughs" document.
    throw new ConfigError([issue(0, [], err instanceof Error ? err.message : String(err))], { cause: err });
  }
  if (!validate(data)) throw located(explain(validate.errors ?? [], data));

  const semantic = checkSemantics(data, dirname(resolve(file)));
  if (semantic.length > 0) throw located(semantic.map(({ path, message }) => ({ field: path, at: path, message })));
  return data;
}

// ── ${VAR} interpolation ────────────────────────────────────────────────────────────
// Applied to parsed string scalars, never to the raw text: an environment value is
// always one string and cannot inject YAML structure (a newline, a `key:` or a flow map).

const REFERENCE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{/g;

function interpolate(doc: Document, env: NodeJS.ProcessEnv): Finding[] {
  const findings: Finding[] = [];
  eachValueScalar(doc.contents, [], (scalar, path) => {
    if (typeof scalar.value !== 'string' || !scalar.value.includes('${')) return;
    scalar.value = scalar.value.replace(REFERENCE, (match, name?: string, fallback?: string) => {
      if (match === '$${') return '${';
      if (name === undefined) {
        findings.push({ field: path, at: path, message: 'malformed "${": write ${NAME}, ${NAME:-default}, or $${ for a literal' });
        return match;
      }
      const value = env[name];
      // As in the shell, `:-` also replaces a variable that is set but empty.
      if (value !== undefined && !(fallback !== undefined && value === '')) return value;
      if (fallback !== undefined) return fallback;
      findings.push({ field: path, at: path, message: `environment variable ${name} is not set (write \${${name}:-default} to give a default)` });
      return '';
    });
  });
  return findings;
}

// `{ port: ${PORT} }` is a YAML error, since `{` and `}` end a plain scalar inside a
// flow collection; the parser's wording does not say so.
function flowHint(text: string, offset: number): string {
  const lineStart = text.lastIndexOf('\n', offset - 1) + 1;
  const lineEnd = text.indexOf('\n', offset);
  const line = text.slice(lineStart, lineEnd < 0 ? undefined : lineEnd);
  return /[[{].*\$\{/.test(line) ? ' (inside [ ] or { }, quote values that use ${...}: "${VAR}")' : '';
}

function eachValueScalar(node: unknown, path: ConfigPath, fn: (scalar: { value: unknown }, path: ConfigPath) => void) {
  if (isScalar(node)) fn(node, path);
  else if (isMap(node)) for (const pair of node.items) eachValueScalar(pair.value, [...path, keyName(pair.key)], fn);
  else if (isSeq(node)) node.items.forEach((item, i) => eachValueScalar(item, [...path, i], fn));
  // Aliases are skipped: their anchor is visited where it is defined.
}

// ── positions ───────────────────────────────────────────────────────────────────────

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  return issues
    .filter((i) => {
      const key = formatIssue(i);
      return seen.has(key) ? false : (seen.add(key), true);
    })
    .sort((a, b) => a.line - b.line || a.col - b.col);
}

// ── Ajv errors → readable findings ─────────────────────────────────────────────────

function explain(errors: ErrorObject[], data: unknown): Finding[] {
  const findings: Finding[] = [];
  const consumed = new Set<ErrorObject>();
  // A TypeBox union is an `anyOf`; Ajv reports one error per failed branch plus the
  // anyOf itself. Fold those into one finding per union.
  for (const union of errors.filter((e) => e.keyword === 'anyOf')) {
    const branches = errors.filter((e) => e.schemaPath.startsWith(`${union.schemaPath}/`));
    for (const e of [union, ...branches]) consumed.add(e);
    const options = union.schema as { const?: unknown }[];
    const path = toPath(union.instancePath, data);
    if (options.every((o) => 'const' in o)) {
      findings.push({ field: path, at: path, message: `must be one of: ${options.map((o) => JSON.stringify(o.const)).join(', ')}` });
    } else {
      // A union of shapes: the branch with the fewest complaints is most likely the one meant.
      const byBranch = Map.groupBy(branches, (e) => e.schemaPath.slice(union.schemaPath.length + 1).split('/')[0]);
      const best = [...byBranch.values()].sort((a, b) => a.length - b.length)[0];
      findings.push(...(best ?? [union]).map((e) => describe(e, data)));
    }
  }
  for (const e of errors) if (!consumed.has(e)) findings.push(describe(e, data));
  return findings;
}

function describe(e: ErrorObject, data: unknown): Finding {
  const path = toPath(e.instancePath, data);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required': {
      // The missing field has no position; point at the object that should hold it.
      return { field: [...path, String(p.missingProperty)], at: path, message: 'required field is missing' };
    }
    case 'additionalProperties': {
      const name = String(p.additionalProperty);
      const known = Object.keys((e.parentSchema as { properties?: object }).properties ?? {});
      const hint = closest(name, known);
      return {
        field: [...path, name],
        at: [...path, name],
        atKey: true,
        message: `unknown field "${name}"${hint ? ` (did you mean "${hint}"?)` : ''}`,
      };
    }
    case 'type':
      return { field: path, at: path, message: `expected ${String(p.type)}, got ${typeName(e.data)}` };
    case 'enum':
      return { field: path, at: path, message: `must be one of: ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'const':
      return { field: path, at: path, message: `must be ${JSON.stringify(p.allowedValue)}` };
    case 'format':
      return { field: path, at: path, message: `must be a valid ${String(p.format)}` };
    case 'pattern':
      return { field: path, at: path, message: explainRefusedPattern(path, e.data) ?? e.message ?? e.keyword };
    case 'uniqueItems':
      return { field: [...path, Number(p.i)], at: [...path, Number(p.i)], message: `duplicate of item ${String(p.j)}` };
    default:
      // Ajv's own wording is clear for the rest (minimum, minLength, pattern, minItems…).
      // Values are never echoed: this may be a secret that came from the environment.
      return { field: path, at: path, message: e.message ?? e.keyword };
  }
}

/** JSON Pointer → path, with array indices as numbers (found by walking the data). */
function typeName(value: unknown): string {
  if (value === null) return 'null';
  return Array.isArray(value) ? 'array' : typeof value;
}

/** Suggest a known field for a typo: same letters ignoring case, or within two edits. */
function closest(name: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = candidate.toLowerCase() === name.toLowerCase() ? 0 : editDistance(name, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    row = next;
  }
  return row[b.length]!;
}
