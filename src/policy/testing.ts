// Policy tests: files the security team writes beside the policies (`policies/tests/*.yaml`),
// each case an input (PolicyInput JSON, as in a decision log line) and the decision the
// policies must reach. `ztgw policy test` loads them with the policy set and runs them.
//
// Loading is as strict as for policies, with file:line:col for every problem, including
// an expectation naming a rule that does not exist: a test that can never pass or never
// fail for the reason it states is worse than none.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Ajv } from 'ajv';
import type { ConfigIssue } from '../core/diagnostics.ts';
import type { Decision, Evaluator } from './evaluate.ts';
import type { PolicyInput } from './input.ts';
import type { PolicyFile } from './load.ts';
import { inputFromJson, PolicyInputError } from './record.ts';
import type { PolicySet } from './set.ts';
import { parseValidated, type ParsedYaml, type Path } from './yaml.ts';

/** Written in a test as `rule: default`: denied because no rule allowed, not because one denied. */
export const DEFAULT_DENY = 'default';

const NAME = '[a-z0-9][a-z0-9_.-]*';
const RULE_REF = `^${NAME}/${NAME}$`;

const Strict = { additionalProperties: false } as const;

const Expect = Type.Object(
  {
    effect: Type.Union([Type.Literal('allow'), Type.Literal('deny'), Type.Literal('step_up')]),
    rule: Type.Optional(
      Type.String({
        pattern: `^(${NAME}/${NAME}|${DEFAULT_DENY})$`,
        description: '"policy/rule": one of the rules that decided. "default": denied because no rule applied.',
      }),
    ),
    reportOnly: Type.Optional(
      Type.Array(Type.String({ pattern: RULE_REF }), {
        uniqueItems: true,
        description: 'Exactly the report-only rules ("policy/rule") that would have changed the outcome; [] for none.',
      }),
    ),
  },
  Strict,
);

const TestCase = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    description: Type.Optional(Type.String()),
    input: Type.Unknown({ description: 'A PolicyInput as JSON (the `input` of a decision log line).' }),
    expect: Expect,
  },
  Strict,
);

const TestFileSchema = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    apiVersion: Type.Literal('zt-gateway/v1'),
    kind: Type.Optional(Type.Literal('PolicyTests')),
    description: Type.Optional(Type.String()),
    fixtures: Type.Optional(
      Type.Unknown({ description: 'Not read: a place to define YAML anchors (&managed-laptop) that tests reuse (*managed-laptop).' }),
    ),
    tests: Type.Array(TestCase, { minItems: 1 }),
  },
  Strict,
);

type TestFileDocument = Static<typeof TestFileSchema>;
export type Expectation = Static<typeof Expect>;

const ajv = new Ajv({ allErrors: true, strict: true, verbose: true });
const validate = ajv.compile<TestFileDocument>(TestFileSchema);

export interface PolicyTest {
  readonly file: string;
  /** Where the test case starts. */
  readonly line: number;
  readonly col: number;
  readonly name: string;
  readonly input: PolicyInput;
  readonly expect: Expectation;
}

export type PolicyTestLoadResult = { ok: true; tests: readonly PolicyTest[]; files: readonly string[] } | { ok: false; issues: ConfigIssue[] };

export interface PolicyTestResult {
  readonly test: PolicyTest;
  readonly passed: boolean;
  readonly decision: Decision;
  /** Which parts of the expectation were not met; empty when passed. */
  readonly mismatches: readonly ('effect' | 'rule' | 'reportOnly')[];
}

const isTestFile = (name: string) => /\.ya?ml$/.test(name) && !name.startsWith('.');

/** Every `*.yaml` / `*.yml` in `dir`, checked against `set` (rule names in expectations). */
export function loadPolicyTests(dir: string, set: PolicySet): PolicyTestLoadResult {
  const at = (message: string): PolicyTestLoadResult => ({ ok: false, issues: [{ file: dir, line: 1, col: 1, field: '', message }] });
  let names: string[];
  try {
    names = readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isFile() && isTestFile(d.name))
      .map((d) => d.name)
      .sort();
  } catch (err) {
    return at(`cannot read test directory (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  // Zero tests passing is not a green build.
  if (names.length === 0) return at('no test files (*.yaml) in the directory');
  const files: PolicyFile[] = [];
  for (const name of names) {
    const file = join(dir, name);
    try {
      files.push({ file, text: readFileSync(file, 'utf8') });
    } catch (err) {
      return { ok: false, issues: [{ file, line: 1, col: 1, field: '', message: `cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})` }] };
    }
  }
  return compilePolicyTests(files, set);
}

export function compilePolicyTests(files: readonly PolicyFile[], set: PolicySet): PolicyTestLoadResult {
  const issues: ConfigIssue[] = [];
  const tests: PolicyTest[] = [];
  const rules = new Map(set.policies.map((p) => [p.name, p]));

  /** Problems with a "policy/rule" an expectation names. */
  const refProblem = (ref: string, reportOnly: boolean): string | undefined => {
    const [policyName = '', ruleName = ''] = ref.split('/');
    const policy = rules.get(policyName);
    if (policy === undefined) return `no policy is named "${policyName}" (policies: ${[...rules.keys()].join(', ')})`;
    if (!policy.rules.some((r) => r.name === ruleName)) {
      return `policy "${policyName}" has no rule "${ruleName}" (rules: ${policy.rules.map((r) => r.name).join(', ')})`;
    }
    if (reportOnly && policy.mode !== 'report-only') return `policy "${policyName}" is enforced, so it is never a report-only finding`;
    return undefined;
  };

  for (const { file, text } of files) {
    const parsed = parseValidated(text, file, validate);
    if ('issues' in parsed) {
      issues.push(...parsed.issues);
      continue;
    }
    const names = new Map<string, number>();
    parsed.data.tests.forEach((t, i) => {
      const at: Path = ['tests', i];
      const earlier = names.get(t.name);
      if (earlier !== undefined) issues.push(parsed.issue([...at, 'name'], `duplicate test name "${t.name}" (first used by tests[${earlier}])`));
      else names.set(t.name, i);

      const wrongRefs = expectationIssues(t.expect, [...at, 'expect'], parsed, refProblem);
      issues.push(...wrongRefs);
      let input: PolicyInput;
      try {
        input = inputFromJson(t.input);
      } catch (e) {
        if (!(e instanceof PolicyInputError)) throw e;
        issues.push(...e.issues.map((issue) => parsed.issue([...at, 'input', ...issue.path], issue.message, issue.atKey)));
        return;
      }
      if (wrongRefs.length > 0) return;
      const { line, col } = parsed.issue(at, '');
      tests.push({ file, line, col, name: t.name, input, expect: t.expect });
    });
  }
  if (issues.length > 0) return { ok: false, issues: issues.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col)) };
  return { ok: true, tests, files: files.map((f) => f.file) };
}

function expectationIssues(
  expect: Expectation,
  at: Path,
  parsed: ParsedYaml,
  refProblem: (ref: string, reportOnly: boolean) => string | undefined,
): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  if (expect.rule === DEFAULT_DENY) {
    if (expect.effect !== 'deny') out.push(parsed.issue([...at, 'rule'], `"${DEFAULT_DENY}" means the default deny, so the effect must be deny`));
  } else if (expect.rule !== undefined) {
    const problem = refProblem(expect.rule, false);
    if (problem !== undefined) out.push(parsed.issue([...at, 'rule'], problem));
  }
  (expect.reportOnly ?? []).forEach((ref, i) => {
    const problem = refProblem(ref, true);
    if (problem !== undefined) out.push(parsed.issue([...at, 'reportOnly', i], problem));
  });
  return out;
}

export function runPolicyTests(evaluator: Evaluator, tests: readonly PolicyTest[]): PolicyTestResult[] {
  return tests.map((test) => {
    const decision = evaluator.evaluate(test.input);
    const mismatches = compareDecision(test.expect, decision);
    return { test, passed: mismatches.length === 0, decision, mismatches };
  });
}

const refName = (r: { policy: string; rule: string }) => `${r.policy}/${r.rule}`;

function compareDecision(expect: Expectation, decision: Decision): PolicyTestResult['mismatches'][number][] {
  const out: PolicyTestResult['mismatches'][number][] = [];
  if (decision.effect !== expect.effect) out.push('effect');
  const deciding = decision.rules.map(refName);
  if (expect.rule === DEFAULT_DENY ? deciding.length > 0 : expect.rule !== undefined && !deciding.includes(expect.rule)) out.push('rule');
  if (expect.reportOnly !== undefined) {
    const got = new Set(decision.reportOnly.map(refName));
    if (got.size !== expect.reportOnly.length || expect.reportOnly.some((r) => !got.has(r))) out.push('reportOnly');
  }
  return out;
}

/** "allow by p/r", "deny by default", "step_up"; with the report-only findings when asked. */
export function describeExpectation(expect: Expectation): string {
  const by = expect.rule === undefined ? '' : expect.rule === DEFAULT_DENY ? ' by default' : ` by ${expect.rule}`;
  const ro = expect.reportOnly === undefined ? '' : `, report-only ${expect.reportOnly.length === 0 ? 'none' : expect.reportOnly.join(', ')}`;
  return `${expect.effect}${by}${ro}`;
}

/** The same for a decision; "report-only none" only when `withNone` (the test asked about report-only). */
export function describeDecision(decision: Decision, withNone = true): string {
  const by = decision.rules.length === 0 ? (decision.effect === 'deny' ? ' by default' : '') : ` by ${decision.rules.map(refName).join(', ')}`;
  const findings = decision.reportOnly.map((f) => `${refName(f)} (would be ${f.wouldBe})`).join(', ');
  const ro = findings !== '' ? `, report-only ${findings}` : withNone ? ', report-only none' : '';
  const errors = decision.errors.length === 0 ? '' : `; errors: ${decision.errors.map((e) => `${refName(e)}: ${e.message}`).join('; ')}`;
  return `${decision.effect}${by}${ro}${errors}`;
}

/** One line: where the test is, its name, what was expected and what came out. */
export function formatFailure(result: PolicyTestResult): string {
  const { test } = result;
  return `FAIL ${test.file}:${test.line}:${test.col}: ${test.name}: expected ${describeExpectation(test.expect)}; got ${describeDecision(result.decision, test.expect.reportOnly !== undefined)}`;
}
