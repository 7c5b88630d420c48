// A decision as JSON: the line the gateway writes to its decision log, and what
// `ztgw policy replay` and `explain` read back. The record carries the whole input, so a
// decision can be re-evaluated later against another policy set exactly as it was made
// (request.time included: working-hours rules replay at the hour they were decided).
//
// JSON has no Date and no undefined: Dates travel as RFC 3339 strings, and an absent field
// is an absent key (never null, never a default — see input.ts on why absence matters).
// inputFromJson is the boundary for text a person may have edited (a test file, a pasted
// log line), so it checks every field and names the one that is wrong.
import { formatPath } from '../core/yaml-path.ts';
import type { Decision } from './evaluate.ts';
import type { PolicyInput } from './input.ts';
import type { Effect } from './schema.ts';
import { DEFAULT_RECORD_LIMITS, type RecordLimits } from './record-limits.ts';
import { loggedPath } from '../observability/log-path.ts';

export interface DecisionRecord {
  readonly log: 'decision';
  readonly reqId: string;
  readonly sub?: string;
  readonly device?: string;
  readonly route?: string;
  readonly effect: Effect;
  /** The rules that decided; empty for the default deny. */
  readonly rules: readonly { policy: string; rule: string; effect: Effect }[];
  /** Report-only policies that would have changed the effect. */
  readonly reportOnly: readonly { policy: string; rule: string; effect: Effect; wouldBe: Effect }[];
  /** The active policy set's hash. */
  readonly policySet: string;
  readonly evalMicros: number;
  readonly errors: readonly { policy: string; rule: string; message: string }[];
  /** inputToJson of the decision input, within the record limits (record-limits.ts). */
  readonly input: unknown;
  /** Input fields cut or left out to keep the line bounded: a replay of this record may differ. */
  readonly truncated?: readonly string[];
}

export type JsonPath = (string | number)[];

export interface InputIssue {
  /** Within the input: ['request', 'time']. */
  readonly path: JsonPath;
  readonly message: string;
  /** The problem is the field's name (an unknown field), not its value. */
  readonly atKey?: true;
}

/** An input or record that is not the shape it must be; `issues` lists every problem. */
export class PolicyInputError extends Error {
  static readonly code = 'ERR_POLICY_INPUT_INVALID';
  readonly code = PolicyInputError.code;
  readonly issues: readonly InputIssue[];

  constructor(issues: readonly InputIssue[]) {
    super(issues.map((i) => `${formatJsonPath(i.path) || '(input)'}: ${i.message}`).join('\n'));
    this.name = 'PolicyInputError';
    this.issues = issues;
  }
}

/** `identity.groups[0]`: the same naming as config and policy file messages. */
export const formatJsonPath: (path: JsonPath) => string = formatPath;

/** The input as JSON values: Dates become ISO strings, undefined fields disappear. */
export function inputToJson(input: PolicyInput): unknown {
  return JSON.parse(JSON.stringify(input)) as unknown;
}

export function decisionRecord(
  reqId: string,
  decision: Decision,
  input: PolicyInput,
  policySetHash: string,
  limits: RecordLimits = DEFAULT_RECORD_LIMITS,
): DecisionRecord {
  const { sub } = input.identity;
  const { id: device } = input.device;
  const { route } = input.request;
  const truncated: string[] = [];
  return {
    log: 'decision',
    reqId,
    ...(sub !== undefined && { sub: cut(sub, limits.maxValueChars, 'identity.sub', truncated) }),
    ...(device !== undefined && { device }),
    ...(route !== undefined && { route }),
    effect: decision.effect,
    // Copied field by field: the record's shape must not follow whatever else the
    // evaluator's objects come to carry.
    rules: decision.rules.map(({ policy, rule, effect }) => ({ policy, rule, effect })),
    reportOnly: decision.reportOnly.map(({ policy, rule, effect, wouldBe }) => ({ policy, rule, effect, wouldBe })),
    policySet: policySetHash,
    evalMicros: decision.evalMicros,
    errors: decision.errors.map(({ policy, rule, message }) => ({ policy, rule, message: cut(message, 4 * limits.maxValueChars, 'errors', truncated) })),
    input: inputToJson(bounded(input, limits, truncated)),
    ...(truncated.length > 0 && { truncated }),
  };
}

function cut(value: string, max: number, field: string, truncated: string[]): string {
  if (value.length <= max) return value;
  if (!truncated.includes(field)) truncated.push(field);
  return `${value.slice(0, max)}…`;
}

/** `;jsessionid=…`: a session id in the path is a credential (observability/log-path.ts). */
function withoutParameterValues(path: string, truncated: string[]): string {
  if (!path.includes(';')) return path;
  const shown = loggedPath(path)!;
  if (!truncated.includes('request.path')) truncated.push('request.path');
  return shown;
}

/** The input as a decision line may carry it: allow-listed headers, bounded strings and claims. */
function bounded(input: PolicyInput, limits: RecordLimits, truncated: string[]): PolicyInput {
  const { request, identity } = input;
  const max = limits.maxValueChars;
  const headers: Record<string, string> = {};
  for (const name of Object.keys(request.headers)) {
    if (!limits.headers.has(name)) continue;
    headers[name] = cut(request.headers[name]!, max, `request.headers.${name}`, truncated);
  }
  // Token contents are signed by the IdP, but a token may be as large as a request head.
  const oversized = (field: 'claims' | 'groups') => {
    const value = identity[field];
    const over = value !== undefined && JSON.stringify(value).length > limits.maxClaimsChars;
    if (over) truncated.push(`identity.${field}`);
    return over;
  };
  const dropClaims = oversized('claims');
  const dropGroups = oversized('groups');
  return {
    ...input,
    request: {
      ...request,
      host: cut(request.host, max, 'request.host', truncated),
      path: cut(withoutParameterValues(request.path, truncated), 4 * max, 'request.path', truncated),
      headers,
    },
    identity: {
      ...identity,
      ...(identity.sub !== undefined && { sub: cut(identity.sub, max, 'identity.sub', truncated) }),
      ...(dropClaims && { claims: undefined }),
      ...(dropGroups && { groups: undefined }),
    },
  };
}

// ── reading JSON back ────────────────────────────────────────────────────────────────

type Check<T> = (value: unknown, path: JsonPath, issues: InputIssue[]) => T | undefined;

const shown = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'string' ? `"${v.length > 40 ? `${v.slice(0, 40)}…` : v}"` : `${typeof v} ${JSON.stringify(v)}`);

const expected =
  <T>(what: string, test: (v: unknown) => v is T): Check<T> =>
  (value, path, issues) => {
    if (test(value)) return value;
    issues.push({ path, message: `expected ${what}, got ${shown(value)}` });
    return undefined;
  };

const str = expected('a string', (v): v is string => typeof v === 'string');
const bool = expected('true or false', (v): v is boolean => typeof v === 'boolean');
const num = expected('a number', (v): v is number => typeof v === 'number' && Number.isFinite(v));

const oneOf = <V extends string>(values: readonly V[]): Check<V> =>
  expected(`one of ${values.map((v) => `"${v}"`).join(', ')}`, (v): v is V => values.includes(v as V));

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);

// RFC 3339 with a zone, as toISOString writes it; a zoneless time would be read in the
// local zone of whoever runs the tool, and working-hours rules would shift with it.
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i;

const time: Check<Date> = (value, path, issues) => {
  if (value instanceof Date && !Number.isNaN(value.getTime())) return value;
  const d = typeof value === 'string' && RFC3339.test(value) ? new Date(value) : undefined;
  if (d !== undefined && !Number.isNaN(d.getTime())) return d;
  issues.push({ path, message: `expected an RFC 3339 time with a zone such as "2024-06-03T08:30:00Z", got ${shown(value)}` });
  return undefined;
};

const list =
  <T>(item: Check<T>): Check<T[]> =>
  (value, path, issues) => {
    if (!Array.isArray(value)) {
      issues.push({ path, message: `expected a list, got ${shown(value)}` });
      return undefined;
    }
    return value.map((v, i) => item(v, [...path, i], issues)).filter((v) => v !== undefined);
  };

const stringMap: Check<Record<string, string>> = (value, path, issues) => {
  if (!isRecord(value)) {
    issues.push({ path, message: `expected an object of strings, got ${shown(value)}` });
    return undefined;
  }
  for (const [k, v] of Object.entries(value)) str(v, [...path, k], issues);
  return value as Record<string, string>;
};

const jsonObject: Check<Record<string, unknown>> = (value, path, issues) => {
  if (isRecord(value)) return value;
  issues.push({ path, message: `expected an object, got ${shown(value)}` });
  return undefined;
};

interface Field {
  readonly check: Check<unknown>;
  readonly required?: boolean;
}

/**
 * An object with exactly these fields. Unknown fields are errors: in a hand-written test
 * input, `device.enroled: true` would otherwise be silently absent, and the test would
 * pass or fail for a reason nobody wrote down.
 */
const object =
  (fields: Readonly<Record<string, Field>>): Check<Record<string, unknown>> =>
  (value, path, issues) => {
    if (!isRecord(value)) {
      issues.push({ path, message: `expected an object, got ${shown(value)}` });
      return undefined;
    }
    const out: Record<string, unknown> = {};
    for (const [name, v] of Object.entries(value)) {
      // Own entries only: `constructor`, `toString` or `__proto__` in a record is an unknown
      // field like any other, not a member of Object.prototype taken for a field's checker.
      const field = Object.hasOwn(fields, name) ? fields[name] : undefined;
      if (field === undefined) {
        issues.push({ path: [...path, name], message: `unknown field "${name}" (known: ${Object.keys(fields).join(', ')})`, atKey: true });
      } else if (v === null) {
        issues.push({ path: [...path, name], message: 'null is not a value here: leave the field out when it is absent' });
      } else {
        const checked = field.check(v, [...path, name], issues);
        if (checked !== undefined) out[name] = checked;
      }
    }
    for (const [name, field] of Object.entries(fields)) {
      if (field.required && !Object.hasOwn(value, name)) issues.push({ path: [...path, name], message: 'required field is missing' });
    }
    return out;
  };

const req = (check: Check<unknown>): Field => ({ check, required: true });
const opt = (check: Check<unknown>): Field => ({ check });

const POSTURE = object({
  managed: req(bool),
  disk_encrypted: req(bool),
  os: req(str),
  os_version: req(str),
  trust: req(oneOf(['low', 'medium', 'high'])),
  last_check_in: opt(time),
});

// The shape of PolicyInput (input.ts). identity, device, risk and request.headers may be
// left out, meaning empty: nothing known. That is what they hold for an anonymous request
// without a device, and it keeps hand-written test inputs to what the test is about.
const INPUT = object({
  request: req(
    object({
      method: req(str),
      host: req(str),
      path: req(str),
      route: opt(str),
      ip: req(str),
      headers: opt(stringMap),
      time: req(time),
    }),
  ),
  identity: opt(
    object({
      sub: opt(str),
      issuer: opt(str),
      groups: opt(list(str)),
      claims: opt(jsonObject),
      amr: opt(list(str)),
      acr: opt(str),
      auth_time: opt(time),
    }),
  ),
  device: opt(
    object({
      id: opt(str),
      binding: opt(oneOf(['dpop', 'mtls', 'none'])),
      enrolled: opt(bool),
      owner_match: opt(bool),
      posture: opt(POSTURE),
      stale: opt(bool),
      fingerprint_changed: opt(bool),
    }),
  ),
  risk: opt(
    object({
      score: opt(num),
      flagged: opt(bool),
      top_features: opt(list(str)),
      model_version: opt(str),
      history: opt(num),
    }),
  ),
});

/** A PolicyInput from JSON (inputToJson's output, or a person's), Dates revived; throws PolicyInputError. */
export function inputFromJson(value: unknown): PolicyInput {
  const issues: InputIssue[] = [];
  const out = INPUT(value, [], issues);
  if (issues.length > 0 || out === undefined) throw new PolicyInputError(issues);
  const request = out.request as Record<string, unknown>;
  return {
    request: { ...request, headers: request.headers ?? {} },
    identity: out.identity ?? {},
    device: out.device ?? {},
    risk: out.risk ?? {},
  } as PolicyInput;
}

const EFFECT = oneOf<Effect>(['allow', 'deny', 'step_up']);
const RULE_REF = object({ policy: req(str), rule: req(str), effect: req(EFFECT) });

// Every field of the record is checked: replay reports what it compares, and a record
// that is not what the gateway writes is better reported than half read.
const RECORD_FIELDS = {
  log: req(oneOf(['decision'])),
  reqId: req(str),
  sub: opt(str),
  device: opt(str),
  route: opt(str),
  effect: req(EFFECT),
  rules: req(list(RULE_REF)),
  reportOnly: opt(list(object({ policy: req(str), rule: req(str), effect: req(EFFECT), wouldBe: req(EFFECT) }))),
  policySet: req(str),
  evalMicros: opt(num),
  errors: opt(list(object({ policy: req(str), rule: req(str), message: req(str) }))),
  // Checked by inputFromJson, below.
  input: req((v) => v),
  truncated: opt(list(str)),
} satisfies Record<keyof DecisionRecord, Field>;
const RECORD = object(RECORD_FIELDS);

/**
 * The keys of a log line's top level that are names of Object.prototype members
 * (`constructor`, `toString`, `__proto__`…). The logger's own fields are ignored, but no
 * logger writes these: such a line is damaged or forged, and is reported, not read.
 */
export function prototypeKeyIssues(line: Readonly<Record<string, unknown>>): InputIssue[] {
  const issues: InputIssue[] = [];
  for (const k of Object.keys(line)) {
    if (k in Object.prototype) issues.push({ path: [k], message: `"${k}" is not a field of a decision record or a log line`, atKey: true });
  }
  return issues;
}

/**
 * A decision record read back from a log line, with its input revived. The line may also
 * carry the logger's own fields (pino's level, time, pid, hostname, msg…): those are
 * ignored, not errors, since they depend on how the log was written, not on the record.
 */
export function decisionFromJson(value: unknown): { record: DecisionRecord; input: PolicyInput } {
  if (!isRecord(value)) throw new PolicyInputError([{ path: [], message: `expected a decision record object, got ${shown(value)}` }]);
  const issues = prototypeKeyIssues(value);
  const own = Object.fromEntries(Object.entries(value).filter(([k]) => Object.hasOwn(RECORD_FIELDS, k)));
  const record = RECORD(own, [], issues);
  let input: PolicyInput | undefined;
  if (Object.hasOwn(own, 'input')) {
    try {
      input = inputFromJson(own.input);
    } catch (e) {
      if (!(e instanceof PolicyInputError)) throw e;
      issues.push(...e.issues.map((i) => ({ ...i, path: ['input', ...i.path] })));
    }
  }
  if (issues.length > 0 || record === undefined || input === undefined) throw new PolicyInputError(issues);
  // Older or hand-made records may leave out what replay does not need.
  return { record: { reportOnly: [], errors: [], evalMicros: 0, ...record } as unknown as DecisionRecord, input };
}
