// YAML with positions, and Ajv errors as positioned issues, for policy files.
//
// Positions come from src/core/yaml-path.ts, shared with the gateway config loader;
// the messages here are worded for policy authors.
import type { ErrorObject, ValidateFunction } from 'ajv';
import { LineCounter, parseDocument } from 'yaml';
import type { ConfigIssue } from '../core/diagnostics.ts';
import { formatPath, offsetOf, toPath, type YamlPath } from '../core/yaml-path.ts';

export { formatPath };
export type Path = YamlPath;

export interface ParsedYaml {
  data: unknown;
  /** The issue for a problem at `path` (at its key when `atKey`, for unknown fields). */
  issue(path: Path, message: string, atKey?: boolean): ConfigIssue;
}

export function parseYaml(text: string, file: string): ParsedYaml | { issues: ConfigIssue[] } {
  const lineCounter = new LineCounter();
  // A duplicated key would let the later value silently win (a second `effect:`).
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number, field: string, message: string): ConfigIssue => ({ file, ...lineCounter.linePos(offset), field, message });
  // After a syntax error yaml calls everything unexpected: only the first is worth reading.
  // Warnings count as errors: a policy that means something other than it says is worse
  // than one that does not load.
  const syntax = [...doc.errors.filter((e, i) => i === 0 || e.code === 'DUPLICATE_KEY'), ...doc.warnings];
  if (syntax.length > 0) {
    return {
      issues: syntax.map((e) =>
        at(e.pos[0], '', e.code === 'MULTIPLE_DOCS' ? 'one policy per file: move the document after "---" to a file of its own' : e.message),
      ),
    };
  }
  let data: unknown;
  try {
    data = doc.toJS();
  } catch (err) {
    // e.g. the alias-expansion limit that stops a "billion laughs" document.
    return { issues: [at(0, '', err instanceof Error ? err.message : String(err))] };
  }
  return { data, issue: (path, message, atKey = false) => at(offsetOf(doc, path, atKey), formatPath(path), message) };
}

/** Parse, then validate against a schema: the data typed, or every issue positioned. */
export function parseValidated<T>(text: string, file: string, validate: ValidateFunction<T>): (ParsedYaml & { data: T }) | { issues: ConfigIssue[] } {
  const parsed = parseYaml(text, file);
  if ('issues' in parsed) return parsed;
  if (!validate(parsed.data)) return { issues: schemaIssues(validate.errors ?? [], parsed) };
  return parsed as ParsedYaml & { data: T };
}

/** Ajv's errors in the words a policy author needs, positioned. */
export function schemaIssues(errors: readonly ErrorObject[], parsed: ParsedYaml): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const folded = new Set<ErrorObject>();
  // A union of literals (effect, mode) is an anyOf: one error per branch plus the anyOf.
  for (const union of errors.filter((e) => e.keyword === 'anyOf')) {
    for (const e of errors) if (e === union || e.schemaPath.startsWith(`${union.schemaPath}/`)) folded.add(e);
    const options = (union.schema as { const?: unknown }[]).map((o) => JSON.stringify(o.const));
    issues.push(parsed.issue(toPath(union.instancePath, parsed.data), `must be one of: ${options.join(', ')}`));
  }
  for (const e of errors) {
    if (folded.has(e)) continue;
    const path = toPath(e.instancePath, parsed.data);
    const p = e.params as Record<string, unknown>;
    if (e.keyword === 'required') {
      issues.push({ ...parsed.issue(path, 'required field is missing'), field: formatPath([...path, String(p.missingProperty)]) });
    } else if (e.keyword === 'additionalProperties') {
      const name = String(p.additionalProperty);
      const parent = e.parentSchema as { properties?: object; patternProperties?: object };
      const known = Object.keys(parent.properties ?? {});
      const patterns = Object.keys(parent.patternProperties ?? {});
      const message =
        known.length > 0
          ? `unknown field "${name}" (known: ${known.join(', ')})`
          : `"${name}" is not a valid name here (must match ${patterns.join(' or ')})`;
      issues.push(parsed.issue([...path, name], message, true));
    } else if (e.keyword === 'const') {
      issues.push(parsed.issue(path, `must be ${JSON.stringify(p.allowedValue)}`));
    } else if (e.keyword === 'type') {
      issues.push(parsed.issue(path, `expected ${String(p.type)}, got ${Array.isArray(e.data) ? 'array' : e.data === null ? 'null' : typeof e.data}`));
    } else {
      // Ajv's own wording is clear for the rest (pattern, minItems, uniqueItems…).
      issues.push(parsed.issue(path, e.message ?? e.keyword));
    }
  }
  return issues;
}
