import { describe, it, expect } from 'vitest';
import { formatIssue } from '../core/diagnostics.ts';
import { createEvaluator } from './evaluate.ts';
import { compilePolicyFiles } from './load.ts';
import type { PolicySet } from './set.ts';
import { compilePolicyTests, formatFailure, runPolicyTests, type PolicyTest } from './testing.ts';

const POLICIES = {
  'office.yaml': `apiVersion: zt-gateway/v1
name: office
rules:
  - name: eng
    effect: allow
    when: '"eng" in identity.groups'
  - name: contractors
    effect: allow
    when: '"contractor" in identity.groups'
  - name: no-deletes
    effect: deny
    when: request.method == "DELETE"
`,
  'trial.yaml': `apiVersion: zt-gateway/v1
name: trial
mode: report-only
rules:
  - name: no-contractors
    effect: deny
    when: '"contractor" in identity.groups'
`,
};

function set(): PolicySet {
  const result = compilePolicyFiles(
    Object.entries(POLICIES).map(([file, text]) => ({ file, text })),
    undefined,
  );
  if (!result.ok) throw new Error(result.issues.map(formatIssue).join('\n'));
  return result.set;
}

const request = (method = 'GET') => `{ method: ${method}, host: h, path: /, ip: 10.0.0.1, time: "2024-06-03T08:30:00Z" }`;

/** A test file with one case per entry: [name, groups, method, expect (YAML flow)]. */
function tests(...cases: [string, string[], string, string][]): PolicyTest[] {
  const text = `apiVersion: zt-gateway/v1\ntests:\n${cases
    .map(([name, groups, method, expect]) => `  - name: ${name}\n    input: { request: ${request(method)}, identity: { groups: [${groups.join(', ')}] } }\n    expect: ${expect}\n`)
    .join('')}`;
  const result = compilePolicyTests([{ file: 't.yaml', text }], set());
  if (!result.ok) throw new Error(result.issues.map(formatIssue).join('\n'));
  return [...result.tests];
}

const outcomes = (ts: PolicyTest[]) => runPolicyTests(createEvaluator(set()), ts).map((r) => [r.test.name, r.mismatches]);

describe('runPolicyTests', () => {
  it('effect, and the named rule among those that decided', () => {
    expect(
      outcomes(
        tests(
          ['eng', ['eng'], 'GET', '{ effect: allow, rule: office/eng }'],
          ['eng-and-contractor', ['eng', 'contractor'], 'GET', '{ effect: allow, rule: office/contractors }'],
          ['wrong-rule', ['eng'], 'GET', '{ effect: allow, rule: office/contractors }'],
          ['wrong-effect', ['eng'], 'DELETE', '{ effect: allow }'],
        ),
      ),
    ).toEqual([
      ['eng', []],
      ['eng-and-contractor', []],
      ['wrong-rule', ['rule']],
      ['wrong-effect', ['effect']],
    ]);
  });

  it('rule: default holds only for the default deny, not for a deny rule', () => {
    expect(
      outcomes(
        tests(
          ['nobody', ['sales'], 'GET', '{ effect: deny, rule: default }'],
          ['delete', ['eng'], 'DELETE', '{ effect: deny, rule: default }'],
          ['delete-by-rule', ['eng'], 'DELETE', '{ effect: deny, rule: office/no-deletes }'],
        ),
      ),
    ).toEqual([
      ['nobody', []],
      ['delete', ['rule']],
      ['delete-by-rule', []],
    ]);
  });

  it('reportOnly is the exact set of findings; [] asserts none; leaving it out checks nothing', () => {
    expect(
      outcomes(
        tests(
          ['found', ['contractor'], 'GET', '{ effect: allow, reportOnly: [trial/no-contractors] }'],
          ['none-expected', ['contractor'], 'GET', '{ effect: allow, reportOnly: [] }'],
          ['unchecked', ['contractor'], 'GET', '{ effect: allow }'],
          ['none', ['eng'], 'GET', '{ effect: allow, reportOnly: [] }'],
          ['missing', ['eng'], 'GET', '{ effect: allow, reportOnly: [trial/no-contractors] }'],
        ),
      ),
    ).toEqual([
      ['found', []],
      ['none-expected', ['reportOnly']],
      ['unchecked', []],
      ['none', []],
      ['missing', ['reportOnly']],
    ]);
  });

  it('a failure is one line: where, which test, expected, and what came out (errors too)', () => {
    const [result] = runPolicyTests(createEvaluator(set()), tests(['contractor', ['contractor'], 'GET', '{ effect: deny, reportOnly: [] }']));
    expect(formatFailure(result!)).toBe(
      'FAIL t.yaml:3:5: contractor: expected deny, report-only none; got allow by office/contractors, report-only trial/no-contractors (would be deny)',
    );
  });
});

describe('compilePolicyTests', () => {
  it('needs at least one test and the apiVersion', () => {
    const result = compilePolicyTests([{ file: 't.yaml', text: 'tests: []\n' }], set());
    expect(result.ok ? [] : result.issues.map(formatIssue)).toEqual(['t.yaml:1:1: apiVersion: required field is missing', 't.yaml:1:8: tests: must NOT have fewer than 1 items']);
  });

  it('duplicate test names in a file', () => {
    const text = `apiVersion: zt-gateway/v1\ntests:\n  - { name: a, input: { request: ${request()} }, expect: { effect: deny } }\n  - { name: a, input: { request: ${request()} }, expect: { effect: deny } }\n`;
    const result = compilePolicyTests([{ file: 't.yaml', text }], set());
    expect(result.ok ? [] : result.issues.map(formatIssue)).toEqual(['t.yaml:4:13: tests[1].name: duplicate test name "a" (first used by tests[0])']);
  });

  it('fixtures are not read, so anchors can live there', () => {
    const text = `apiVersion: zt-gateway/v1
fixtures:
  req: &req ${request()}
  anything: [1, { two: 3 }]
tests:
  - { name: a, input: { request: *req }, expect: { effect: deny, rule: default } }
`;
    const result = compilePolicyTests([{ file: 't.yaml', text }], set());
    expect(result.ok && result.tests.map((t) => t.input.request.method)).toEqual(['GET']);
  });
});
