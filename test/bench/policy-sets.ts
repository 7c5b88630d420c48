// Policy sets the benchmarks load: one definition of "a realistic route" for the in-process
// decision benchmark (policy-decisions.ts) and the HTTP target (targets.ts), so the two
// measure the same rules.
//
// The realistic route has 10 policies of one rule each, every kind of condition the
// example policies use: group membership, method lists, ip_in, device posture with has()
// guards, hour_in/weekday_in in a named zone, glob, has(risk.…), and one report-only
// trial. A GET from group "eng" is allowed at any hour, with or without a device, from
// 10.0.0.0/8 or loopback (the HTTP benchmark's clients), so the figures do not depend on
// when the benchmark runs; every deny and step_up rule is evaluated before the allows.
import type { PolicyFile } from '../../src/policy/load.ts';

interface RuleSpec {
  readonly name: string;
  readonly effect: 'allow' | 'deny' | 'step_up';
  readonly when: string;
  /** Extra YAML lines under the rule (stepUp, obligations), indented by four spaces. */
  readonly extra?: readonly string[];
}

interface PolicySpec {
  readonly name: string;
  /** YAML flow mapping for appliesTo. */
  readonly appliesTo: string;
  readonly mode?: 'enforce' | 'report-only';
  readonly rules: readonly RuleSpec[];
}

function policyYaml(p: PolicySpec): string {
  const lines = ['apiVersion: zt-gateway/v1', 'kind: Policy', `name: ${p.name}`, `appliesTo: ${p.appliesTo}`];
  if (p.mode !== undefined) lines.push(`mode: ${p.mode}`);
  lines.push('rules:');
  for (const r of p.rules) {
    lines.push(`  - name: ${r.name}`, `    effect: ${r.effect}`, `    when: ${JSON.stringify(r.when)}`);
    for (const e of r.extra ?? []) lines.push(`    ${e}`);
  }
  return `${lines.join('\n')}\n`;
}

const STEP_UP = ['stepUp: { acrValues: [phr], maxAgeS: 600 }'];

/** The 10 policies (10 rules) that apply to `route`. */
function routePolicies(route: string): PolicySpec[] {
  const on = `{ routes: [${route}] }`;
  const one = (name: string, rule: RuleSpec, mode?: PolicySpec['mode']): PolicySpec => ({ name: `${route}-${name}`, appliesTo: on, rules: [rule], ...(mode && { mode }) });
  return [
    one('risk-flagged', { name: 'deny-flagged', effect: 'deny', when: 'has(risk.flagged) && risk.flagged' }),
    one('risk-score', {
      name: 'step-up-risky',
      effect: 'step_up',
      when: 'has(risk.score) && risk.score >= 0.7 && !(has(identity.acr) && identity.acr == "phr")',
      extra: STEP_UP,
    }),
    one('blocked-networks', { name: 'known-bad-ranges', effect: 'deny', when: 'ip_in(request.ip, "198.51.100.0/24") || ip_in(request.ip, "203.0.113.0/24")' }),
    one('unmanaged-writes', {
      name: 'unmanaged-device',
      effect: 'deny',
      when: 'request.method in ["POST", "PUT", "PATCH", "DELETE"] && (!has(device.posture) || !device.posture.managed || (has(device.stale) && device.stale))',
    }),
    one('contractor-hours', {
      name: 'contractors-after-hours',
      effect: 'deny',
      when: '"contractor" in identity.groups && (hour_in(request.time, "America/New_York") < 7 || hour_in(request.time, "America/New_York") >= 20)',
    }),
    one('admin-paths', { name: 'admins-only', effect: 'deny', when: 'glob(request.path, "/admin/**") && !("admins" in identity.groups)' }),
    one('new-fingerprint', {
      name: 'changed-client',
      effect: 'step_up',
      when: 'has(device.fingerprint_changed) && device.fingerprint_changed && !(has(identity.amr) && "hwk" in identity.amr)',
      extra: STEP_UP,
    }),
    one('engineers-managed', {
      name: 'engineers-working-hours',
      effect: 'allow',
      when: [
        '"eng" in identity.groups',
        'request.method in ["GET", "HEAD"]',
        'has(device.enrolled) && device.enrolled',
        'has(device.owner_match) && device.owner_match',
        'has(device.posture) && device.posture.managed',
        '!(has(device.stale) && device.stale)',
        'weekday_in(request.time, "Europe/Berlin") in [1, 2, 3, 4, 5]',
        'hour_in(request.time, "Europe/Berlin") >= 8',
        'hour_in(request.time, "Europe/Berlin") < 19',
      ].join(' && '),
      extra: ['obligations: { headers: { x-access-grant: eng-working-hours } }'],
    }),
    one('engineers-office', {
      name: 'engineers-office-network',
      effect: 'allow',
      when: '"eng" in identity.groups && request.method in ["GET", "HEAD"] && (ip_in(request.ip, "10.0.0.0/8") || ip_in(request.ip, "127.0.0.0/8"))',
    }),
    one(
      'disk-encryption-trial',
      { name: 'unencrypted-disk', effect: 'deny', when: 'has(device.id) && (!has(device.posture) || !device.posture.disk_encrypted)' },
      'report-only',
    ),
  ];
}

/** A policy that does not apply to `route`'s requests: another route, host, host suffix or prefix. */
function otherPolicy(i: number, route: string): PolicySpec {
  const scopes = [
    `{ routes: [svc-${i}] }`,
    `{ hosts: [svc-${i}.internal.example.com] }`,
    `{ hosts: ["*.svc-${i}.example.com"] }`,
    `{ pathPrefixes: [/svc-${i}] }`,
    // Filed under the benchmarked route but for another prefix: found by the index, then
    // dropped by the full scope check.
    `{ routes: [${route}], pathPrefixes: [/admin-${i}] }`,
  ];
  const group = `team-${i % 37}`;
  const net = `10.${i % 250}.0.0/16`;
  return {
    name: `other-${i}`,
    appliesTo: scopes[i % scopes.length]!,
    rules: [
      { name: 'risky', effect: 'deny', when: `has(risk.score) && risk.score > 0.${(i % 9) + 1}` },
      { name: 'team', effect: 'allow', when: `"${group}" in identity.groups && ip_in(request.ip, "${net}") && hour_in(request.time, "UTC") >= 6` },
    ],
  };
}

/** 10 policies, 10 rules, all on `route`. */
export function realisticRouteSet(route: string): PolicyFile[] {
  return routePolicies(route).map((p) => ({ file: `${p.name}.yaml`, text: policyYaml(p) }));
}

/** `total` policies: the 10 of realisticRouteSet(route) and `total − 10` that apply elsewhere. */
export function largeSet(route: string, total: number): PolicyFile[] {
  const others = Array.from({ length: total - 10 }, (_, i) => otherPolicy(i, route));
  return [...realisticRouteSet(route), ...others.map((p) => ({ file: `${p.name}.yaml`, text: policyYaml(p) }))];
}

/** The baseline the policy overhead is measured against: one policy, one rule, `true`. */
export function allowAllSet(route: string): PolicyFile[] {
  return [{ file: 'allow-all.yaml', text: policyYaml({ name: 'allow-all', appliesTo: `{ routes: [${route}] }`, rules: [{ name: 'everyone', effect: 'allow', when: 'true' }] }) }];
}
