// `ztgw policy validate|test|explain|replay`: the security team's tools for policies/.
// Exit codes follow ztgw: 0 ok, 1 a policy test failed, 2 bad input (usage, a policy set,
// test file, input or log that does not load; a log with any record that cannot be read,
// after the report on the others). Replay exits 1 when a decision would now allow what was
// denied or stepped up (a widening a policy repository's CI should stop on); other flips are
// information, exit 0. Unreadable input (exit 2) takes precedence over a widening.
//
// Without --config there are no route, upstream or tier names to check policies against;
// each unchecked reference is a warning line (on `err`), so that a typo cannot pass CI
// silently unless the warnings are ignored.
import { createReadStream, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError, formatIssue, type ConfigIssue } from '../core/diagnostics.ts';
import { createEvaluator, type Decision, type ExplainedRule, type Explanation, type RuleRef } from '../policy/evaluate.ts';
import type { PolicyInput } from '../policy/input.ts';
import { loadPolicyDir, type KnownNames } from '../policy/load.ts';
import {
  decisionFromJson,
  formatJsonPath,
  inputFromJson,
  inputToJson,
  PolicyInputError,
  prototypeKeyIssues,
  type DecisionRecord,
  type InputIssue,
  type JsonPath,
} from '../policy/record.ts';
import type { Effect } from '../policy/schema.ts';
import type { PolicySet } from '../policy/set.ts';
import { formatFailure, loadPolicyTests, runPolicyTests } from '../policy/testing.ts';

export const POLICY_USAGE = `usage: ztgw policy <command> [options]

  validate [DIR]                 check every policy file; exit 0, or 2 with file:line:col: field: message
                                 (warnings, such as matches() over what the client sends, go to stderr)
  test [DIR]                     run the policy tests in DIR/tests/*.yaml; exit 1 if any fails
  explain --input FILE [DIR] [--json]
                                 evaluate one input (PolicyInput JSON, or a decision log line) and show
                                 every rule that applies, whether it matched, and why the effect came out
  replay --log FILE [--policies DIR] [--json]
                                 re-evaluate every decision in a decision log (JSON lines) against the
                                 policies in DIR and list the decisions that would change. Exit 1
                                 when any would now be allowed that was denied or stepped up (CI can
                                 gate on it); a record that cannot be read is reported with its line
                                 and skipped (exit 2, before 1)

  --config FILE   the gateway config the policies will run with: route and upstream names are
                  checked against it. Without it they are not checked, and each is a warning.
  DIR             default: the config's policies.dir with --config, otherwise ./policies.
`;

const DEFAULT_DIR = 'policies';

class UsageError extends Error {}

/** Bad input that is not a policy file: an unreadable input or log. Exit 2. */
class InputError extends Error {}

export async function runPolicyCommand(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case 'validate':
        return validate(rest, out, err);
      case 'test':
        return test(rest, out, err);
      case 'explain':
        return explain(rest, out, err);
      case 'replay':
        return await replay(rest, out, err);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        (command === undefined ? err : out).write(POLICY_USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown policy command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || isParseArgsError(e)) {
      err.write(`ztgw policy: ${(e as Error).message}\n\n${POLICY_USAGE}`);
      return 2;
    }
    if (e instanceof ConfigError) {
      writeIssues(err, e.issues);
      return 2;
    }
    if (e instanceof InputError) {
      err.write(`${e.message}\n`);
      return 2;
    }
    throw e;
  }
}

// ── shared ───────────────────────────────────────────────────────────────────────────

function writeIssues(stream: NodeJS.WritableStream, issues: readonly ConfigIssue[]): void {
  for (const issue of issues) stream.write(`${formatIssue(issue)}\n`);
}

interface GatewayContext {
  /** The names policies may refer to; undefined without a config. */
  readonly known?: KnownNames;
  /** The config's policies.dir, resolved against the config file. */
  readonly policiesDir?: string;
}

function readGatewayConfig(configFile: string | undefined): GatewayContext {
  if (configFile === undefined) return {};
  const { config, dir } = loadConfigFile(resolve(configFile));
  // Read without trusting the types: `upstreams` and `policies` are newer than some
  // configs, and this tool should keep working on those.
  const { upstreams, policies } = config as { upstreams?: unknown; policies?: { dir?: unknown } };
  return {
    known: {
      routes: new Set(config.routes.map((r) => r.name)),
      upstreams: new Set(typeof upstreams === 'object' && upstreams !== null ? Object.keys(upstreams) : []),
      // Rate-limit tiers are not in the gateway config yet: any tier a policy names is unknown.
      tiers: new Set(),
    },
    ...(typeof policies?.dir === 'string' && { policiesDir: resolve(dir, policies.dir) }),
  };
}

/**
 * The policy directory: as given; else the config's policies.dir, so that `--config
 * prod.yaml` checks what that gateway would load; else ./policies.
 */
function policyDir(given: string | undefined, gateway: GatewayContext): string {
  return given ?? gateway.policiesDir ?? DEFAULT_DIR;
}

/** The compiled set, or undefined after writing every issue (exit 2). Unchecked names are warnings. */
function loadSet(dir: string, gateway: GatewayContext, err: NodeJS.WritableStream): PolicySet | undefined {
  const result = loadPolicyDir(dir, gateway.known);
  if (!result.ok) {
    writeIssues(err, result.issues);
    return undefined;
  }
  for (const u of result.unchecked ?? []) err.write(`warning: ${formatIssue(u)} (pass --config FILE to check it)\n`);
  for (const w of result.warnings) err.write(`warning: ${formatIssue(w)}\n`);
  return result.set;
}

const COMMON = { config: { type: 'string', short: 'c' } } as const;

function oneDir(positionals: string[], command: string): string | undefined {
  if (positionals.length > 1) throw new UsageError(`${command}: one policy directory at most, got ${positionals.join(' ')}`);
  return positionals[0];
}

const refName = (r: { policy: string; rule: string }) => `${r.policy}/${r.rule}`;

/** "allow by a/b, c/d", "deny by default". */
function effectBy(effect: Effect, rules: readonly { policy: string; rule: string }[]): string {
  if (rules.length === 0) return effect === 'deny' ? 'deny by default' : effect;
  return `${effect} by ${rules.map(refName).join(', ')}`;
}

// ── validate ─────────────────────────────────────────────────────────────────────────

function validate(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): number {
  const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: COMMON });
  const gateway = readGatewayConfig(values.config);
  const set = loadSet(policyDir(oneDir(positionals, 'validate'), gateway), gateway, err);
  if (set === undefined) return 2;
  const rules = set.policies.reduce((n, p) => n + p.rules.length, 0);
  out.write(`ok: ${set.policies.length} policies, ${rules} rules, set ${set.hash}\n`);
  return 0;
}

// ── test ─────────────────────────────────────────────────────────────────────────────

function test(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): number {
  const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: COMMON });
  const gateway = readGatewayConfig(values.config);
  const dir = policyDir(oneDir(positionals, 'test'), gateway);
  const set = loadSet(dir, gateway, err);
  if (set === undefined) return 2;
  const loaded = loadPolicyTests(join(dir, 'tests'), set);
  if (!loaded.ok) {
    writeIssues(err, loaded.issues);
    return 2;
  }
  const results = runPolicyTests(createEvaluator(set), loaded.tests);
  const failed = results.filter((r) => !r.passed);
  for (const f of failed) out.write(`${formatFailure(f)}\n`);
  out.write(`${results.length - failed.length} passed, ${failed.length} failed\n`);
  return failed.length > 0 ? 1 : 0;
}

// ── explain ──────────────────────────────────────────────────────────────────────────

function readInput(file: string): PolicyInput {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new InputError(`${file}: cannot read the input (${why})`);
  }
  // A whole decision log line is accepted too: its input is what was decided on.
  const line = isDecisionLine(value) && Object.hasOwn(value, 'input') ? value : undefined;
  const input = line === undefined ? value : line.input;
  const issues = (bad: readonly InputIssue[], prefix: JsonPath) =>
    new InputError(bad.map((i) => `${file}: ${formatJsonPath([...prefix, ...i.path]) || '(input)'}: ${i.message}`).join('\n'));
  const damaged = line === undefined ? [] : prototypeKeyIssues(line);
  if (damaged.length > 0) throw issues(damaged, []);
  try {
    return inputFromJson(input);
  } catch (e) {
    if (!(e instanceof PolicyInputError)) throw e;
    throw issues(e.issues, line === undefined ? [] : ['input']);
  }
}

/** A JSON object with `"log": "decision"`: a line of the decision log. */
function isDecisionLine(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.hasOwn(value, 'log') && (value as { log: unknown }).log === 'decision';
}

function explain(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): number {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { ...COMMON, input: { type: 'string', short: 'i' }, json: { type: 'boolean', default: false } },
  });
  if (values.input === undefined) throw new UsageError('explain: --input FILE is required');
  const input = readInput(values.input);
  const gateway = readGatewayConfig(values.config);
  const dir = policyDir(oneDir(positionals, 'explain'), gateway);
  const set = loadSet(dir, gateway, err);
  if (set === undefined) return 2;
  const explanation = createEvaluator(set).explain(input);
  if (values.json) {
    const { decision, policies, reason } = explanation;
    const { evalMicros: _, ...rest } = decision;
    out.write(`${JSON.stringify({ policySet: set.hash, input: inputToJson(input), ...rest, reason, policies }, null, 2)}\n`);
  } else {
    out.write(explainText(set, dir, input, explanation));
  }
  return 0;
}

const OUTCOME: Record<ExplainedRule['outcome'], string> = { matched: 'matched', not_matched: 'not matched', error: 'error' };

function explainText(set: PolicySet, dir: string, input: PolicyInput, x: Explanation): string {
  const { request: r, identity: id, device } = input;
  const lines: string[] = [];
  lines.push(`policy set ${set.hash} (${dir}, ${set.policies.length} policies)`);
  lines.push(
    `request:  ${r.method} ${r.host}${r.path}${r.route === undefined ? ' (no route)' : ` (route ${r.route})`} from ${r.ip} at ${r.time.toISOString()}`,
  );
  lines.push(`identity: ${id.sub ?? '(anonymous)'}${id.groups?.length ? ` (groups ${id.groups.join(', ')})` : ''}`);
  lines.push(
    `device:   ${device.id ?? '(none)'}${device.posture ? ` (${device.posture.managed ? 'managed' : 'unmanaged'}, trust ${device.posture.trust})` : ''}`,
  );
  lines.push('');
  if (x.policies.length === 0) lines.push('no policy applies to this request');
  const width = Math.max(0, ...x.policies.flatMap((p) => p.rules.map((rule) => rule.rule.length)));
  // Conditions go under the rule name, two further in: outcome (11), effect (7), gaps.
  const indent = ' '.repeat(2 + 11 + 2 + 7 + 2 + 2);
  for (const p of x.policies) {
    lines.push(`${p.policy} (${p.mode}) ${p.file}`);
    for (const rule of p.rules) {
      lines.push(`  ${OUTCOME[rule.outcome].padEnd(11)}  ${rule.effect.padEnd(7)}  ${rule.rule.padEnd(width)}  ${p.file}:${rule.line}:${rule.col}`);
      if (rule.outcome === 'error') {
        lines.push(`${indent}! ${rule.error} (an error in ${rule.effect === 'allow' ? 'an allow rule never grants' : `a ${rule.effect} rule counts as a match`})`);
      }
      for (const l of rule.when.trim().split('\n')) lines.push(`${indent}${l}`);
    }
    lines.push('');
  }
  const skipped = set.policies.length - x.policies.length;
  if (skipped > 0) lines.push(`${skipped} other ${skipped === 1 ? 'policy does' : 'policies do'} not apply to this request (appliesTo)`, '');
  const d = x.decision;
  lines.push(`effect: ${d.effect}`);
  lines.push(`why:    ${x.reason}`);
  const o = d.obligations;
  const obligations = [
    o.rateLimitTier && `rate-limit tier ${o.rateLimitTier}`,
    o.upstream && `upstream ${o.upstream}`,
    ...Object.entries(o.headers ?? {}).map(([k, v]) => `header ${k}: ${v}`),
  ].filter(Boolean);
  if (obligations.length > 0) lines.push(`obligations: ${obligations.join('; ')}`);
  return `${lines.join('\n')}\n`;
}

// ── replay ───────────────────────────────────────────────────────────────────────────

type FlipGroup = 'allowToDeny' | 'denyToAllow' | 'other';

interface Flip {
  /** Line in the log. */
  readonly line: number;
  readonly reqId: string;
  readonly sub?: string;
  readonly route?: string;
  readonly was: { effect: Effect; rules: readonly RuleRef[]; policySet: string };
  readonly now: { effect: Effect; rules: readonly RuleRef[]; reportOnly: Decision['reportOnly']; errors: Decision['errors'] };
}

interface ReplayReport {
  log: string;
  policies: string;
  policySet: string;
  records: number;
  /** Lines that are not decision records (access logs, other JSON, text). */
  skipped: number;
  /** Lines that say they are decision records but cannot be read. */
  invalid: { line: number; message: string }[];
  unchanged: number;
  /** Of the unchanged: same effect, different deciding rules. */
  unchangedOtherRules: number;
  flips: Record<FlipGroup, Flip[]>;
}

const sameRules = (a: readonly RuleRef[], b: readonly RuleRef[]) => {
  const key = (rs: readonly RuleRef[]) => rs.map(refName).sort().join('\n');
  return key(a) === key(b);
};

function group(was: Effect, now: Effect): FlipGroup {
  if (was === 'allow' && now === 'deny') return 'allowToDeny';
  if (was === 'deny' && now === 'allow') return 'denyToAllow';
  return 'other';
}

async function replay(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: { ...COMMON, log: { type: 'string' }, policies: { type: 'string' }, json: { type: 'boolean', default: false } },
  });
  if (values.log === undefined) throw new UsageError('replay: --log FILE is required');
  const gateway = readGatewayConfig(values.config);
  const dir = policyDir(values.policies, gateway);
  // The log before the policies: if it cannot be read, that is the one thing to say,
  // not the last line after the policies' warnings.
  const stream = createReadStream(values.log, { encoding: 'utf8' });
  try {
    await new Promise<void>((ok, fail) => stream.once('open', () => ok()).once('error', fail));
  } catch (e) {
    throw new InputError(`${values.log}: cannot read the log (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  const set = loadSet(dir, gateway, err);
  if (set === undefined) {
    stream.destroy();
    return 2;
  }
  const evaluator = createEvaluator(set);
  const report: ReplayReport = {
    log: values.log,
    policies: dir,
    policySet: set.hash,
    records: 0,
    skipped: 0,
    invalid: [],
    unchanged: 0,
    unchangedOtherRules: 0,
    flips: { allowToDeny: [], denyToAllow: [], other: [] },
  };

  let lineNo = 0;
  for await (const line of createInterface({ input: stream, crlfDelay: Infinity })) {
    lineNo++;
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      report.skipped++;
      continue;
    }
    if (!isDecisionLine(value)) {
      report.skipped++;
      continue;
    }
    let record: DecisionRecord;
    let input: PolicyInput;
    let decision: Decision;
    try {
      ({ record, input } = decisionFromJson(value));
      decision = evaluator.evaluate(input);
    } catch (e) {
      // A record is the log's, not ours to trust: whatever is wrong with one, it is
      // reported with its line and skipped, and the rest are still compared.
      const message = e instanceof PolicyInputError ? e.issues.map((i) => `${formatJsonPath(i.path)}: ${i.message}`).join('; ') : `cannot be evaluated (${String(e)})`;
      report.invalid.push({ line: lineNo, message });
      continue;
    }
    report.records++;
    if (decision.effect === record.effect) {
      report.unchanged++;
      if (!sameRules(record.rules, decision.rules)) report.unchangedOtherRules++;
      continue;
    }
    report.flips[group(record.effect, decision.effect)].push({
      line: lineNo,
      reqId: record.reqId,
      ...(record.sub !== undefined && { sub: record.sub }),
      ...(record.route !== undefined && { route: record.route }),
      was: { effect: record.effect, rules: record.rules, policySet: record.policySet },
      now: { effect: decision.effect, rules: decision.rules, reportOnly: decision.reportOnly, errors: decision.errors },
    });
  }

  // Unreadable records are bad input, and never silently dropped from the comparison:
  // the report covers the rest, and the exit code says that something was left out.
  for (const i of report.invalid) err.write(`${values.log}:${i.line}: ${i.message}\n`);
  out.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : replayText(report));
  if (report.invalid.length > 0) return 2;
  return widened(report) > 0 ? 1 : 0;
}

/** Decisions that now allow what was denied or needed a step-up: access the change would grant. */
function widened(r: ReplayReport): number {
  return r.flips.denyToAllow.length + r.flips.other.filter((f) => f.now.effect === 'allow').length;
}

const GROUPS: [FlipGroup, string][] = [
  ['allowToDeny', 'allow → deny'],
  ['denyToAllow', 'deny → allow'],
  ['other', 'other flips'],
];

function replayText(r: ReplayReport): string {
  const flipped = GROUPS.reduce((n, [g]) => n + r.flips[g].length, 0);
  const lines = [
    `replayed ${r.log} against ${r.policies} (set ${r.policySet})`,
    `  decision records: ${r.records}, skipped lines: ${r.skipped}, invalid records: ${r.invalid.length}`,
    `  unchanged: ${r.unchanged}${r.unchangedOtherRules > 0 ? ` (${r.unchangedOtherRules} decided by other rules)` : ''}`,
    `  flipped: ${flipped} (allow → deny ${r.flips.allowToDeny.length}, deny → allow ${r.flips.denyToAllow.length}, other ${r.flips.other.length})`,
  ];
  const granted = widened(r);
  if (granted > 0) lines.push(`  now allowed that were not: ${granted} (exit 1)`);
  for (const [g, title] of GROUPS) {
    const flips = r.flips[g];
    if (flips.length === 0) continue;
    lines.push('', `${title} (${flips.length})`);
    for (const f of flips) {
      lines.push(`  ${f.reqId}  sub ${f.sub ?? '-'}  route ${f.route ?? '-'}  (line ${f.line})`);
      lines.push(`    was ${effectBy(f.was.effect, f.was.rules)} (set ${f.was.policySet})`);
      const errors = f.now.errors.length > 0 ? `; errors: ${f.now.errors.map((e) => `${refName(e)}: ${e.message}`).join('; ')}` : '';
      lines.push(`    now ${effectBy(f.now.effect, f.now.rules)}${errors}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function isParseArgsError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}
