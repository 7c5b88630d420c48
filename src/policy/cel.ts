// The CEL environment policy conditions run in: the one typed context the security team
// writes against (documented field by field here; policies/README.md is written from
// it), the helper functions, and compileCondition(), which parses, type-checks and plans
// an expression once, at load time.
//
// How it maps onto @bufbuild/cel: the library parses and evaluates, but cannot type-check
// calls or field selections (see check.ts) and declares structured variables only as
// protobuf messages. So the context is declared in check.ts's type language and checked
// by check.ts; at run time `request`, `identity`, `device` and `risk` are bound as plain
// maps (variables of type dyn), and the helpers are registered with celFunc. A field that
// is absent at run time (no device, no risk score yet) is a missing map key: reading it is
// an error — which never grants, see evaluate.ts — and `has(risk.score)` tests for it.
import { celEnv, celFunc, CelScalar, isCelError, objectType, parse, plan, type CelInput, type CelResult } from '@bufbuild/cel';
import { timestampDate, TimestampSchema, type Timestamp } from '@bufbuild/protobuf/wkt';
import { adviseOn } from './advice.ts';
import { depth, MAX_NESTING, nestedPast } from './ast.ts';
import { createChecker, formatType, T, type CelT, type FieldDecl, type FuncDecl } from './check.ts';
import { compileDirect, type DirectCondition } from './direct.ts';
import type { DecisionScope } from './input.ts';
import { BOUNDED_RE2 } from './regex.ts';
import { STANDARD_FUNCTIONS } from './stdlib.ts';
import { cidrProblem, glob, globProblem, hourIn, ipIn, ipProblem, timeZoneProblem, weekdayIn } from './functions.ts';

const field = (type: CelT, doc: string): FieldDecl => ({ type, doc });

/** Every variable a condition can read. Any field may be absent at run time; see has(). */
export const POLICY_CONTEXT = {
  request: T.object('request', {
    method: field(T.string, 'HTTP method, upper-case ("GET").'),
    host: field(T.string, 'Host the client addressed: lower-case, without the port.'),
    path: field(T.string, 'Normalised path (dot segments resolved, "//" merged), without the query string. Lower-cased on a route with `caseInsensitive: true`.'),
    route: field(T.string, 'Name of the route the request matched in the gateway config.'),
    ip: field(T.string, 'Client IP address: the peer, or behind trusted proxies the first untrusted X-Forwarded-For hop.'),
    headers: field(
      T.map(T.string, T.string),
      'Request headers by lower-case name; a repeated header is joined with ", ". Credentials (authorization, proxy-authorization, cookie, dpop) are left out: decisions are logged and replayed.',
    ),
    time: field(T.timestamp, 'When the decision is made.'),
  }),
  identity: T.object('identity', {
    sub: field(T.string, 'The token subject.'),
    issuer: field(T.string, 'The token issuer (iss), as a URL.'),
    groups: field(T.list(T.string), 'Groups from the token.'),
    claims: field(T.map(T.string, T.dyn), 'Every claim of the verified token, as JSON values (numbers are doubles).'),
    amr: field(T.list(T.string), 'Authentication methods (RFC 8176 amr claim), e.g. ["pwd", "hwk"].'),
    acr: field(T.string, 'Authentication context class (acr claim).'),
    auth_time: field(T.timestamp, 'When the user last authenticated (auth_time claim).'),
  }),
  device: T.object('device', {
    id: field(T.string, 'Device fingerprint: JWK thumbprint (DPoP) or x5t#S256 (mTLS). Absent when the token is not device-bound.'),
    binding: field(T.enum(['dpop', 'mtls', 'none']), 'How the device proved itself.'),
    enrolled: field(T.bool, 'The device is in the registry and not revoked.'),
    owner_match: field(T.bool, "The registry's owner of the device is the token subject."),
    posture: field(
      T.object('device.posture', {
        managed: field(T.bool, 'Managed by the organisation (MDM).'),
        disk_encrypted: field(T.bool, 'Full-disk encryption on.'),
        os: field(T.string, 'Operating system, "" when unknown.'),
        os_version: field(T.string, 'Operating system version, "" when unknown.'),
        trust: field(T.enum(['low', 'medium', 'high']), 'Trust level assigned at enrolment.'),
        last_check_in: field(T.timestamp, 'When the device last reported its posture.'),
      }),
      'Posture from the device registry; absent for devices the registry does not know.',
    ),
    stale: field(T.bool, 'The last check-in is older than devices.staleAfterS.'),
    fingerprint_changed: field(T.bool, 'Passive client traits differ from this device’s last request (a risk signal only).'),
  }),
  risk: T.object('risk', {
    score: field(T.double, 'Anomaly score from 0 (normal) to 1.'),
    flagged: field(T.bool, 'The score is above the model’s threshold.'),
    top_features: field(T.list(T.string), 'Features that contributed most to the score.'),
    model_version: field(T.string, 'Version of the model that scored the request.'),
    history: field(T.double, 'Requests this principal’s feature history holds, this one included (new principals, and all after a restart, start at 1).'),
  }),
} as const satisfies Record<string, CelT>;

export type PolicyVariable = keyof typeof POLICY_CONTEXT;

const TIMESTAMP = objectType(TimestampSchema);
const { STRING, BOOL, INT } = CelScalar;
const date = (ts: { message: Timestamp }) => timestampDate(ts.message);

const badLiteral = (arg: number, value: unknown, problem: (s: string) => string | undefined) => {
  const message = typeof value === 'string' ? problem(value) : undefined;
  return message === undefined ? undefined : { arg, message };
};

/** The helpers: what the checker knows about each, and what @bufbuild/cel runs. */
const HELPERS: { decl: FuncDecl; doc: string; run: ReturnType<typeof celFunc> }[] = [
  {
    decl: {
      name: 'ip_in',
      args: [T.string, T.string],
      result: T.bool,
      literals: ([ip, cidr]) => badLiteral(0, ip, ipProblem) ?? badLiteral(1, cidr, cidrProblem),
    },
    doc: 'ip_in(ip, cidr): the address is in the network ("10.0.0.0/8", "2001:db8::/32"); IPv4-mapped IPv6 addresses count as IPv4.',
    run: celFunc('ip_in', [STRING, STRING], BOOL, ipIn),
  },
  {
    decl: { name: 'hour_in', args: [T.timestamp, T.string], result: T.int, literals: ([, tz]) => badLiteral(1, tz, timeZoneProblem) },
    doc: 'hour_in(ts, tz): hour of the day 0–23 in a time zone ("Europe/Berlin", "UTC", "+02:00").',
    run: celFunc('hour_in', [TIMESTAMP, STRING], INT, (ts, tz) => BigInt(hourIn(date(ts), tz))),
  },
  {
    decl: { name: 'weekday_in', args: [T.timestamp, T.string], result: T.int, literals: ([, tz]) => badLiteral(1, tz, timeZoneProblem) },
    doc: 'weekday_in(ts, tz): day of the week in a time zone, 0 = Sunday … 6 = Saturday.',
    run: celFunc('weekday_in', [TIMESTAMP, STRING], INT, (ts, tz) => BigInt(weekdayIn(date(ts), tz))),
  },
  {
    decl: { name: 'glob', args: [T.string, T.string], result: T.bool, literals: ([, pattern]) => badLiteral(1, pattern, globProblem) },
    // No has_prefix helper: s.startsWith(p) is CEL's, and glob(path, "/admin/**") is the
    // segment-aware prefix test ("/administrator" is not under "/admin").
    doc: 'glob(s, pattern): "*" matches within one path segment, "**" (a whole segment) any number of segments, so "/admin/**" covers "/admin" and everything under it.',
    run: celFunc('glob', [STRING, STRING], BOOL, glob),
  },
];

export const HELPER_DOCS: readonly string[] = HELPERS.map((h) => h.doc);

const check = createChecker({ variables: POLICY_CONTEXT, functions: [...STANDARD_FUNCTIONS, ...HELPERS.map((h) => h.decl)] });

const env = celEnv({
  variables: Object.fromEntries(Object.keys(POLICY_CONTEXT).map((name) => [name, CelScalar.DYN])),
  funcs: HELPERS.map((h) => h.run),
  // matches() with its compiled patterns cached and its input bounded (regex.ts).
  re2: BOUNDED_RE2,
});

/** The values of the four variables, as @bufbuild/cel takes them (see input.ts). */
export type PolicyBindings = Readonly<Record<PolicyVariable, CelInput>>;

export interface CompiledCondition {
  readonly source: string;
  /** @bufbuild/cel's plan: the definition of what the condition means. */
  readonly program: (bindings: PolicyBindings) => CelResult;
  /** The same condition over the plain input, where it can answer exactly (see direct.ts); absent when it cannot. */
  readonly direct?: DirectCondition;
}

export interface ConditionProblem {
  /** 1-based, within the expression. */
  line: number;
  col: number;
  kind: 'syntax' | 'type';
  message: string;
}

/** A condition that loads but deserves a second look (advice.ts); 1-based, within the expression. */
export interface ConditionWarning {
  line: number;
  col: number;
  message: string;
}

export type ConditionResult =
  | { ok: true; condition: CompiledCondition; warnings: ConditionWarning[] }
  | { ok: false; problems: ConditionProblem[] };

function lineCol(source: string, offset: number): { line: number; col: number } {
  const before = source.slice(0, offset);
  const line = before.split('\n').length;
  return { line, col: offset - before.lastIndexOf('\n') };
}

/**
 * Parse, type-check against POLICY_CONTEXT, and plan: everything but running it. Any text
 * gives a result: a condition, or its problems; nothing it does throws (a policy edit
 * must never take the gateway down, source.ts).
 */
export function compileCondition(source: string): ConditionResult {
  try {
    return compile(source);
  } catch (err) {
    // Belt and braces: every limit below is meant to keep the passes from throwing.
    const message = err instanceof RangeError ? TOO_DEEP : `the condition could not be compiled (${err instanceof Error ? err.message : String(err)})`;
    return { ok: false, problems: [{ line: 1, col: 1, kind: 'syntax', message }] };
  }
}

const TOO_DEEP = `the condition nests too deeply (at most ${MAX_NESTING} levels): split it into several rules, or use "in" with a list`;

/**
 * The longest condition compiled, in UTF-16 code units. @bufbuild/cel's parser takes
 * 5–12 µs a character here (an 80 KB condition 0.4–1 s, a 1 MB string literal 4 s before
 * it ran out of stack), and a policy load runs on the gateway's event loop. 32 K holds a
 * list of a thousand names or a few hundred networks, and parses in about 0.3 s at worst;
 * cel-go's own default limit is 100,000 code points.
 */
export const MAX_CONDITION_CHARS = 32_768;

function compile(source: string): ConditionResult {
  if (source.length > MAX_CONDITION_CHARS) {
    return { ok: false, problems: [{ line: 1, col: 1, kind: 'syntax', message: `the condition is ${source.length} characters long, over the limit of ${MAX_CONDITION_CHARS}` }] };
  }
  const tooDeep = nestedPast(source, MAX_NESTING);
  if (tooDeep !== undefined) return { ok: false, problems: [{ ...lineCol(source, tooDeep), kind: 'syntax', message: TOO_DEEP }] };
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(source);
  } catch (err) {
    // The parser recurses: a RangeError is a stack it ran out of, not a bug to surface.
    if (err instanceof RangeError) return { ok: false, problems: [{ line: 1, col: 1, kind: 'syntax', message: 'the condition is too deeply nested or too long for the parser' }] };
    const e = err as { rawMessage?: string; message?: string; location?: { start: { line: number; column: number } } };
    const { line, column } = e.location?.start ?? { line: 1, column: 1 };
    return { ok: false, problems: [{ line, col: column, kind: 'syntax', message: e.rawMessage ?? e.message ?? String(err) }] };
  }
  if (parsed.expr === undefined) return { ok: false, problems: [{ line: 1, col: 1, kind: 'syntax', message: 'an empty condition' }] };
  // Before any pass that recurses over the tree (checker, direct.ts, plan, evaluation).
  if (depth(parsed.expr) > MAX_NESTING) return { ok: false, problems: [{ line: 1, col: 1, kind: 'syntax', message: TOO_DEEP }] };
  const { type, issues } = check(parsed);
  const problems: ConditionProblem[] = issues.map((i) => ({ ...lineCol(source, i.offset), kind: 'type', message: i.message }));
  if (problems.length === 0 && type.kind !== 'bool' && type.kind !== 'dyn') {
    problems.push({ line: 1, col: 1, kind: 'type', message: `a condition must be a bool, this one is ${formatType(type)}` });
  }
  if (problems.length > 0) return { ok: false, problems };
  const positions = parsed.sourceInfo?.positions ?? {};
  const warnings = adviseOn(parsed.expr, (e) => positions[String(e.id)] ?? 0).map((a) => ({ ...lineCol(source, a.offset), message: a.message }));
  const direct = compileDirect(parsed.expr);
  return { ok: true, condition: { source, program: plan(env, parsed) as CompiledCondition['program'], ...(direct && { direct }) }, warnings };
}

/**
 * A condition for one decision: on the plain input when direct.ts can answer, otherwise
 * (and for every error) by @bufbuild/cel on the bindings, converted at most once per
 * decision and only if some condition needs them.
 */
export function evalCondition(condition: CompiledCondition, scope: DecisionScope): boolean | { error: string } {
  const direct = condition.direct?.(scope.input);
  return direct ?? runCondition(condition, scope.bindings());
}

/** true or false, or the reason it could not decide: a non-bool result is an error too. */
export function runCondition(condition: CompiledCondition, bindings: PolicyBindings): boolean | { error: string } {
  let result: CelResult;
  try {
    result = condition.program(bindings);
  } catch (err) {
    // plan() already turns throws into CelErrors; this is the belt to its braces.
    return { error: err instanceof Error ? err.message : String(err) };
  }
  if (isCelError(result)) return { error: result.message };
  if (typeof result !== 'boolean') return { error: `the condition gave ${typeof result}, not a bool` };
  return result;
}
