import { describe, it, expect } from 'vitest';
import { formatIssue } from '../core/diagnostics.ts';
import { createEvaluator, type Decision, type PolicyInput } from './evaluate.ts';
import { compilePolicyFiles } from './load.ts';

const KNOWN = { tiers: new Set(['standard', 'strict']), upstreams: new Set(['quarantine']) };

interface RuleSpec {
  name: string;
  effect: 'allow' | 'deny' | 'step_up';
  when: string;
  extra?: string;
}

/** A policy file: `scope` is YAML for appliesTo (omitted: applies everywhere). */
function policy(name: string, rules: RuleSpec[], options: { scope?: string; mode?: string } = {}): string {
  const lines = [`apiVersion: zt-gateway/v1`, `name: ${name}`];
  if (options.scope) lines.push(`appliesTo: ${options.scope}`);
  if (options.mode) lines.push(`mode: ${options.mode}`);
  lines.push('rules:');
  for (const r of rules) {
    lines.push(`  - name: ${r.name}`, `    effect: ${r.effect}`, `    when: ${JSON.stringify(r.when)}`);
    if (r.effect === 'step_up' && !r.extra?.includes('stepUp')) lines.push('    stepUp: { acrValues: [phr] }');
    if (r.extra) lines.push(r.extra);
  }
  return `${lines.join('\n')}\n`;
}

const rule = (name: string, effect: RuleSpec['effect'], when: string, extra?: string): RuleSpec => ({ name, effect, when, ...(extra && { extra }) });

function evaluator(...policies: string[]) {
  const result = compilePolicyFiles(
    policies.map((text, i) => ({ file: `p${String(i).padStart(2, '0')}.yaml`, text })),
    KNOWN,
  );
  if (!result.ok) throw new Error(result.issues.map(formatIssue).join('\n'));
  return createEvaluator(result.set);
}

const BASE: PolicyInput = {
  request: {
    method: 'GET',
    host: 'code.example.com',
    path: '/api/repos',
    route: 'code',
    ip: '10.1.2.3',
    headers: {},
    time: new Date('2024-06-03T08:30:00Z'),
  },
  identity: { sub: 'alice', issuer: 'https://idp.example.com/', groups: ['eng'], claims: {}, amr: ['pwd'] },
  device: { binding: 'dpop', enrolled: true, owner_match: true, stale: false, fingerprint_changed: false },
  // No risk score: reading one is a runtime error, which is what the error tests need.
  risk: {},
};

const input = (request: Partial<PolicyInput['request']> = {}, rest: Partial<Omit<PolicyInput, 'request'>> = {}): PolicyInput => ({
  ...BASE,
  ...rest,
  request: { ...BASE.request, ...request },
});

const deciding = (d: Decision) => d.rules.map((r) => `${r.policy}/${r.rule}`);

describe('semantics (each test fails if its rule changes)', () => {
  it('default deny: a request no rule allows is denied', () => {
    const d = evaluator(policy('p', [rule('admins', 'allow', '"admin" in identity.groups')])).evaluate(input());
    expect(d).toMatchObject({ effect: 'deny', rules: [], errors: [] });
    expect(evaluator(policy('p', [rule('any', 'allow', 'true')], { scope: '{ routes: [payroll] }' })).evaluate(input()).effect).toBe('deny');
  });

  it('an allow rule that matches allows', () => {
    const d = evaluator(policy('p', [rule('eng', 'allow', '"eng" in identity.groups')])).evaluate(input());
    expect(d.effect).toBe('allow');
    expect(deciding(d)).toEqual(['p/eng']);
  });

  it('deny overrides allow, whichever policy or order', () => {
    const allow = policy('a-allow', [rule('everyone', 'allow', 'true')]);
    const deny = policy('b-deny', [rule('writes', 'deny', 'request.method == "GET"')]);
    for (const e of [evaluator(allow, deny), evaluator(deny, allow)]) {
      const d = e.evaluate(input());
      expect(d.effect).toBe('deny');
      expect(deciding(d)).toEqual(['b-deny/writes']);
      expect(d.obligations).toEqual({});
    }
  });

  it('step_up overrides allow', () => {
    const e = evaluator(
      policy('p', [rule('everyone', 'allow', 'true'), rule('sensitive', 'step_up', 'request.path.startsWith("/api")', '    stepUp: { acrValues: [phr, hwk], maxAgeS: 600 }')]),
    );
    const d = e.evaluate(input());
    expect(d.effect).toBe('step_up');
    expect(deciding(d)).toEqual(['p/sensitive']);
    expect(d.stepUp).toEqual({ acrValues: ['phr', 'hwk'], maxAgeS: 600 });
  });

  it('step_up loses to deny', () => {
    const d = evaluator(policy('p', [rule('su', 'step_up', 'true'), rule('no', 'deny', 'true'), rule('yes', 'allow', 'true')])).evaluate(input());
    expect(d.effect).toBe('deny');
    expect(deciding(d)).toEqual(['p/no']);
    expect(d.stepUp).toBeUndefined();
  });

  it('a runtime error in an allow rule never grants, and is recorded', () => {
    const d = evaluator(policy('p', [rule('low-risk', 'allow', 'risk.score < 0.5')])).evaluate(input());
    expect(d.effect).toBe('deny');
    expect(d.rules).toEqual([]);
    expect(d.errors).toEqual([{ policy: 'p', rule: 'low-risk', message: 'field not found: score' }]);
  });

  it('a runtime error in a deny rule denies', () => {
    const d = evaluator(policy('p', [rule('everyone', 'allow', 'true'), rule('risky', 'deny', 'risk.score > 0.9')])).evaluate(input());
    expect(d.effect).toBe('deny');
    expect(deciding(d)).toEqual(['p/risky']);
    expect(d.errors).toEqual([{ policy: 'p', rule: 'risky', message: 'field not found: score' }]);
  });

  it('a runtime error in a step_up rule steps up', () => {
    const d = evaluator(policy('p', [rule('everyone', 'allow', 'true'), rule('flagged', 'step_up', 'risk.flagged')])).evaluate(input());
    expect(d.effect).toBe('step_up');
    expect(deciding(d)).toEqual(['p/flagged']);
    expect(d.stepUp).toEqual({ acrValues: ['phr'] });
    expect(d.errors).toEqual([{ policy: 'p', rule: 'flagged', message: 'field not found: flagged' }]);
  });

  it('a helper failing at run time counts as an error too (a bad client address)', () => {
    const e = evaluator(policy('p', [rule('office', 'allow', 'ip_in(request.ip, "10.0.0.0/8")'), rule('blocked', 'deny', 'ip_in(request.ip, "192.0.2.0/24")')]));
    const d = e.evaluate(input({ ip: 'unknown' }));
    expect(d.effect).toBe('deny');
    expect(deciding(d)).toEqual(['p/blocked']);
  });

  it('report-only never changes the outcome, and is reported when it would have', () => {
    const enforced = policy('enforced', [rule('eng', 'allow', '"eng" in identity.groups')]);
    const trial = policy('trial', [rule('no-gets', 'deny', 'request.method == "GET"')], { mode: 'report-only' });
    const d = evaluator(enforced, trial).evaluate(input());
    expect(d.effect).toBe('allow');
    expect(deciding(d)).toEqual(['enforced/eng']);
    expect(d.reportOnly).toEqual([{ policy: 'trial', rule: 'no-gets', effect: 'deny', wouldBe: 'deny' }]);
  });

  it('report-only allow does not open a default deny, and is reported', () => {
    const trial = policy('trial', [rule('everyone', 'allow', 'true')], { mode: 'report-only' });
    const d = evaluator(trial).evaluate(input());
    expect(d).toMatchObject({ effect: 'deny', rules: [], reportOnly: [{ policy: 'trial', rule: 'everyone', effect: 'allow', wouldBe: 'allow' }] });
  });

  it('report-only step_up is reported over an allow; an error in it counts as for enforced rules', () => {
    const enforced = policy('enforced', [rule('everyone', 'allow', 'true')]);
    const trial = policy('trial', [rule('flagged', 'step_up', 'risk.flagged')], { mode: 'report-only' });
    const d = evaluator(enforced, trial).evaluate(input());
    expect(d.effect).toBe('allow');
    expect(d.reportOnly).toEqual([{ policy: 'trial', rule: 'flagged', effect: 'step_up', wouldBe: 'step_up' }]);
    expect(d.errors).toEqual([{ policy: 'trial', rule: 'flagged', message: 'field not found: flagged' }]);
  });

  it('report-only is not reported when it agrees', () => {
    const enforced = policy('enforced', [rule('no-gets', 'deny', 'request.method == "GET"')]);
    const trial = policy('trial', [rule('everyone', 'allow', 'true'), rule('also-no-gets', 'deny', 'request.method == "GET"')], { mode: 'report-only' });
    const d = evaluator(enforced, trial).evaluate(input());
    expect(d.effect).toBe('deny');
    expect(d.reportOnly).toEqual([]);
  });
});

describe('obligations and step-up requirements', () => {
  it('merge from the deciding allow rules; the first in set order wins a conflict', () => {
    const a = policy('a', [rule('one', 'allow', 'true', '    obligations: { rateLimitTier: strict, headers: { x-team: eng, x-a: "1" } }')]);
    const b = policy('b', [
      rule('two', 'allow', 'true', '    obligations: { rateLimitTier: standard, upstream: quarantine, headers: { x-team: other, x-b: "2" } }'),
      rule('not-matching', 'allow', 'false', '    obligations: { headers: { x-c: "3" } }'),
    ]);
    const d = evaluator(b, a).evaluate(input());
    expect(d.effect).toBe('allow');
    // Set order is file-name order: b is p00.yaml, a is p01.yaml.
    expect(deciding(d)).toEqual(['b/two', 'a/one']);
    expect(d.obligations).toEqual({ rateLimitTier: 'standard', upstream: 'quarantine', headers: { 'x-team': 'other', 'x-b': '2', 'x-a': '1' } });
  });

  it('a header named "constructor" is a header like any other (own keys only)', () => {
    const d = evaluator(policy('p', [rule('one', 'allow', 'true', '    obligations: { headers: { constructor: "x", x-a: "1" } }')])).evaluate(input());
    expect(d.obligations).toEqual({ headers: { constructor: 'x', 'x-a': '1' } });
  });

  it('several step_up rules: the acr values all accept, and the shortest max age', () => {
    const e = evaluator(
      policy('p', [
        rule('a', 'step_up', 'true', '    stepUp: { acrValues: [mfa, phr], maxAgeS: 900 }'),
        rule('b', 'step_up', 'true', '    stepUp: { acrValues: [phr, hwk], maxAgeS: 300 }'),
        rule('c', 'step_up', 'true', '    stepUp: { acrValues: [phr] }'),
      ]),
    );
    expect(e.evaluate(input()).stepUp).toEqual({ acrValues: ['phr'], maxAgeS: 300 });
  });
});

describe('candidate index', () => {
  it('a policy for another route is never evaluated (its failing condition is not reported)', () => {
    const payroll = policy('payroll', [rule('broken', 'deny', 'risk.score > 0.5')], { scope: '{ routes: [payroll] }' });
    const code = policy('code', [rule('eng', 'allow', '"eng" in identity.groups')], { scope: '{ routes: [code] }' });
    const e = evaluator(payroll, code);
    const d = e.evaluate(input());
    expect(d).toMatchObject({ effect: 'allow', errors: [] });
    expect(e.explain(input()).policies.map((p) => p.policy)).toEqual(['code']);
    expect(e.evaluate(input({ route: 'payroll' })).effect).toBe('deny');
  });

  it('hosts (exact and wildcard), segment-aware path prefixes, methods, and their conjunction', () => {
    const e = evaluator(
      policy('exact-host', [rule('r', 'allow', 'true')], { scope: '{ hosts: [hr.example.com] }' }),
      policy('wild-host', [rule('r', 'allow', 'true')], { scope: '{ hosts: ["*.corp.example.com"] }' }),
      policy('admin-path', [rule('r', 'allow', 'true')], { scope: '{ pathPrefixes: [/admin/] }' }),
      policy('writes', [rule('r', 'allow', 'true')], { scope: '{ methods: [POST, DELETE] }' }),
      policy('admin-writes', [rule('r', 'allow', 'true')], { scope: '{ pathPrefixes: [/admin], methods: [POST] }' }),
      policy('everywhere', [rule('r', 'allow', 'true')]),
    );
    const candidates = (req: Partial<PolicyInput['request']>) => e.explain(input(req)).policies.map((p) => p.policy);
    expect(candidates({})).toEqual(['everywhere']);
    expect(candidates({ host: 'hr.example.com' })).toEqual(['exact-host', 'everywhere']);
    expect(candidates({ host: 'a.b.corp.example.com' })).toEqual(['wild-host', 'everywhere']);
    expect(candidates({ host: 'corp.example.com' })).toEqual(['everywhere']);
    expect(candidates({ path: '/admin' })).toEqual(['admin-path', 'everywhere']);
    expect(candidates({ path: '/admin/users/1' })).toEqual(['admin-path', 'everywhere']);
    expect(candidates({ path: '/administrator' })).toEqual(['everywhere']);
    expect(candidates({ method: 'POST' })).toEqual(['writes', 'everywhere']);
    expect(candidates({ method: 'POST', path: '/admin/x' })).toEqual(['admin-path', 'writes', 'admin-writes', 'everywhere']);
    expect(candidates({ method: 'DELETE', path: '/admin/x' })).toEqual(['admin-path', 'writes', 'everywhere']);
  });

  it('a route-scoped policy does not apply when the request has no route', () => {
    const e = evaluator(policy('code', [rule('r', 'allow', 'true')], { scope: '{ routes: [code] }' }));
    expect(e.evaluate(input({ route: undefined })).effect).toBe('deny');
  });
});

describe('explain', () => {
  const e = evaluator(
    policy('code', [rule('eng', 'allow', '"eng" in identity.groups'), rule('risky', 'deny', 'risk.score > 0.9'), rule('never', 'step_up', 'false')], {
      scope: '{ routes: [code] }',
    }),
    policy('trial', [rule('everyone', 'allow', 'true')], { mode: 'report-only' }),
  );

  it('lists every rule of every candidate, with its outcome, and agrees with evaluate', () => {
    const x = e.explain(input());
    expect(x.decision.effect).toBe(e.evaluate(input()).effect);
    expect(x.policies).toEqual([
      {
        policy: 'code',
        file: 'p00.yaml',
        mode: 'enforce',
        rules: [
          { rule: 'eng', effect: 'allow', outcome: 'matched', when: '"eng" in identity.groups', line: 7, col: 11 },
          { rule: 'risky', effect: 'deny', outcome: 'error', error: 'field not found: score', when: 'risk.score > 0.9', line: 10, col: 11 },
          { rule: 'never', effect: 'step_up', outcome: 'not_matched', when: 'false', line: 13, col: 11 },
        ],
      },
      { policy: 'trial', file: 'p01.yaml', mode: 'report-only', rules: [{ rule: 'everyone', effect: 'allow', outcome: 'matched', when: 'true', line: 7, col: 11 }] },
    ]);
  });

  it('says why, in words', () => {
    expect(e.explain(input()).reason).toBe(
      'denied: deny rule code/risky applies (code/risky could not be evaluated — field not found: score — and an error in a deny rule counts as a match); a deny overrides any allow',
    );
    expect(e.explain(input({}, { risk: { score: 0.1 } })).reason).toBe('allowed: allow rule code/eng matched and no deny or step_up rule applies');
    expect(e.explain(input({ route: 'wiki' })).reason).toBe(
      'denied by default: no enforced policy applies to GET route "wiki"; report-only trial/everyone would have made it allow',
    );
    expect(e.explain(input({}, { risk: { score: 0.1 }, identity: { groups: [] } })).reason).toBe(
      'denied by default: none of the 1 allow rule(s) matched; report-only trial/everyone would have made it allow',
    );
  });

  it('evaluate stops at the first effect that applies; explain runs everything', () => {
    const e2 = evaluator(policy('p', [rule('blocked', 'deny', 'true'), rule('broken-allow', 'allow', 'risk.score < 0.1')]));
    expect(e2.evaluate(input()).errors).toEqual([]);
    expect(e2.explain(input()).decision.errors).toEqual([{ policy: 'p', rule: 'broken-allow', message: 'field not found: score' }]);
  });

  it('reports the evaluation time from the injected clock', () => {
    const result = compilePolicyFiles([{ file: 'p.yaml', text: policy('p', [rule('r', 'allow', 'true')]) }], KNOWN);
    if (!result.ok) throw new Error('unexpected');
    let t = 1000;
    const timed = createEvaluator(result.set, { clock: () => (t += 0.0125) });
    expect(timed.evaluate(input()).evalMicros).toBe(12.5);
  });
});

describe('absent identity and device', () => {
  it('an input without identity or device (what the authz stage builds for an unknown one) fails conditions reading them closed', () => {
    const x = input({ route: undefined }, { identity: {}, device: {} });
    const e = evaluator(policy('p', [rule('managed', 'allow', 'device.posture.managed'), rule('unenrolled', 'deny', '!device.enrolled')]));
    expect(e.evaluate(x)).toMatchObject({ effect: 'deny', rules: [{ rule: 'unenrolled' }] });
  });
});

describe('per-decision state (the CEL bindings, converted only when a condition needs them)', () => {
  // `size()` is not compiled (direct.ts), so these rules run on @bufbuild/cel and its
  // bindings; the others run compiled. Decisions alternate between two inputs on one
  // evaluator: nothing converted for one may answer for the other.
  const e = evaluator(
    policy('p', [
      rule('two-groups', 'allow', 'size(identity.groups) > 1'),
      rule('eng', 'allow', '"eng" in identity.groups'),
      rule('senior', 'deny', 'identity.claims.level < 3'),
    ]),
  );
  const a = input({}, { identity: { ...BASE.identity, groups: ['eng', 'oncall'], claims: { level: 5 } } });
  const b = input({}, { identity: { ...BASE.identity, groups: ['sales'], claims: {} } });

  it('two decisions with different inputs share nothing', () => {
    for (let n = 0; n < 3; n++) {
      expect(e.evaluate(a)).toMatchObject({ effect: 'allow', rules: [{ rule: 'two-groups' }, { rule: 'eng' }], errors: [] });
      expect(e.evaluate(b)).toMatchObject({
        effect: 'deny',
        rules: [{ rule: 'senior' }],
        errors: [{ policy: 'p', rule: 'senior', message: 'field not found: level' }],
      });
    }
  });

  it('an input @bufbuild/cel cannot bind (an invalid Date) throws, as it did before the conversion was lazy', () => {
    // toPolicyInput turns an absurd auth_time claim into such a Date; the throw fails the
    // request closed (500), never open.
    const bad = input({}, { identity: { ...BASE.identity, auth_time: new Date(Number.NaN) } });
    expect(() => e.evaluate(bad)).toThrow(/NaN/);
    expect(e.evaluate(a).effect).toBe('allow');
  });
});
