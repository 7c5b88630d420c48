import { celType, isCelError, run, type CelInput } from '@bufbuild/cel';
import { describe, it, expect } from 'vitest';
import type { CelT } from './check.ts';
import { compileCondition, POLICY_CONTEXT, runCondition, type ConditionProblem } from './cel.ts';
import { toBindings, type PolicyInput } from './input.ts';

const FULL: PolicyInput = {
  request: {
    method: 'POST',
    host: 'code.example.com',
    path: '/api/repos/zt/merge',
    route: 'code',
    ip: '10.1.2.3',
    headers: { 'user-agent': 'git/2.45', 'x-tenant': 'acme' },
    time: new Date('2024-06-03T08:30:00Z'), // a Monday, 10:30 in Berlin
  },
  identity: {
    sub: 'alice',
    issuer: 'https://idp.example.com/',
    groups: ['eng', 'oncall'],
    claims: { department: 'eng', level: 3, nested: { a: [1, 2] } },
    amr: ['pwd', 'hwk'],
    acr: 'phr',
    auth_time: new Date('2024-06-03T08:00:00Z'),
  },
  device: {
    id: 'x'.repeat(43),
    binding: 'dpop',
    enrolled: true,
    owner_match: true,
    posture: { managed: true, disk_encrypted: true, os: 'macOS', os_version: '14.5', trust: 'high', last_check_in: new Date('2024-06-02T00:00:00Z') },
    stale: false,
    fingerprint_changed: false,
  },
  risk: { score: 0.12, flagged: false, top_features: ['hour', 'bytes'], model_version: 'v3' },
};

function evaluate(source: string, input: PolicyInput = FULL): boolean | { error: string } {
  const compiled = compileCondition(source);
  if (!compiled.ok) throw new Error(`did not compile: ${JSON.stringify(compiled.problems)}`);
  return runCondition(compiled.condition, toBindings(input));
}

function problems(source: string): ConditionProblem[] {
  const compiled = compileCondition(source);
  if (compiled.ok) throw new Error(`expected "${source}" to be rejected`);
  return compiled.problems;
}

describe('the declared context', () => {
  // The CEL declaration (cel.ts) and the TypeScript input (input.ts) are written apart;
  // this walks every declared field and checks the bound value has the declared type.
  const CEL_NAME: Record<string, string> = { timestamp: 'google.protobuf.Timestamp', object: 'map' };
  function* fields(t: CelT, path: string): Generator<[string, CelT]> {
    if (t.kind !== 'object') return;
    for (const [name, f] of Object.entries(t.fields)) {
      yield [`${path}.${name}`, f.type];
      yield* fields(f.type, `${path}.${name}`);
    }
  }
  const all = Object.entries(POLICY_CONTEXT).flatMap(([name, t]) => [...fields(t, name)]);

  it.each(all)('%s is bound with its declared type', (path, type) => {
    const value = run(path, toBindings(FULL) as Record<string, CelInput>);
    expect(isCelError(value), String(value)).toBe(false);
    if (type.kind !== 'dyn') expect(celType(value as never).name).toBe(CEL_NAME[type.kind] ?? type.kind);
  });

  it('every field is documented', () => {
    const undocumented = Object.entries(POLICY_CONTEXT).flatMap(([name, t]) =>
      [...fields(t, name)].filter(([path]) => {
        const [variable, ...rest] = path.split('.');
        let decl: CelT = POLICY_CONTEXT[variable as keyof typeof POLICY_CONTEXT];
        let doc = '';
        for (const segment of rest) {
          if (decl.kind !== 'object') break;
          doc = decl.fields[segment]!.doc;
          decl = decl.fields[segment]!.type;
        }
        return doc.length < 10;
      }),
    );
    expect(undocumented).toEqual([]);
  });
});

describe('compileCondition: mistakes caught at load time', () => {
  it('syntax errors, with the position in the condition', () => {
    expect(problems('request.method == ')).toEqual([expect.objectContaining({ kind: 'syntax', line: 1 })]);
    expect(problems('request.method = "GET"')[0]).toMatchObject({ kind: 'syntax', line: 1, col: 16 });
  });

  it('comparing values of different types', () => {
    expect(problems('identity.groups == 3')).toEqual([
      { line: 1, col: 17, kind: 'type', message: 'no matching overload for "==" applied to (list<string>, int)' },
    ]);
    expect(problems('risk.score == 1')[0]!.message).toMatch(/\(double, int\)/);
  });

  it('unknown variables, fields, functions and methods', () => {
    expect(problems('user.groups == []')[0]!.message).toMatch(/undeclared reference to "user" \(variables: request, identity, device, risk\)/);
    expect(problems('request.mehtod == "GET"')[0]).toMatchObject({ col: 8, message: expect.stringMatching(/no field "mehtod" in request \(fields: method,/) });
    expect(problems('device.posture.managd')[0]!.message).toMatch(/no field "managd" in device.posture/);
    expect(problems('in_cidr(request.ip, "10.0.0.0/8")')[0]!.message).toBe('undeclared function "in_cidr"');
    expect(problems('request.path.hasPrefix("/a")')[0]!.message).toMatch(/no method "hasPrefix" \(on string\)/);
    expect(problems('request.method.matches(1)')[0]!.message).toMatch(/no matching overload for "matches"/);
  });

  it('string literals a field can never hold', () => {
    expect(problems('device.posture.trust == "hgih"')[0]!.message).toMatch(/"hgih" can never match: the value is one of "low", "medium", "high"/);
    expect(problems('device.binding in ["dpop", "mtsl"]')[0]!.message).toMatch(/"mtsl" can never match/);
  });

  it('a comparison with null, which an absent field is not', () => {
    expect(problems('identity.acr != null')[0]!.message).toMatch(/test it with has\(x.field\)/);
  });

  it('bad literal arguments to helpers and conversions', () => {
    expect(problems('ip_in(request.ip, "10.0.0.0/33")')[0]).toMatchObject({ col: 19, message: expect.stringMatching(/prefix length/) });
    expect(problems('ip_in("10.0.0", "10.0.0.0/8")')[0]!.message).toMatch(/not an IPv4 or IPv6 address/);
    expect(problems('hour_in(request.time, "Europe/Berln") > 9')[0]!.message).toMatch(/not a time zone/);
    expect(problems('glob(request.path, "/a**")')[0]!.message).toMatch(/whole path segment/);
    expect(problems('request.time - identity.auth_time < duration("1x")')[0]!.message).toMatch(/duration/);
    expect(problems('request.path.matches("(")')[0]!.message).toMatch(/missing closing/);
  });

  it('a non-bool condition, and a non-bool macro predicate', () => {
    expect(problems('request.method')[0]!.message).toBe('a condition must be a bool, this one is string');
    expect(problems('identity.groups.exists(g, g)')[0]!.message).toBe('the predicate must be a bool, this one is string');
  });

  it('reports a multi-line condition position by line', () => {
    expect(problems('request.method == "GET" &&\n  identity.grups.exists(g, g == "x")')[0]).toMatchObject({ line: 2, col: 11 });
  });

  it('leaves out the spec-divergent timestamp(int)', () => {
    expect(problems('timestamp(0) < request.time')[0]!.message).toMatch(/no matching overload for "timestamp" applied to \(int\)/);
  });
});

describe('conditions at run time', () => {
  it('read every part of the context', () => {
    expect(evaluate('request.method == "POST" && request.route == "code" && request.headers["x-tenant"] == "acme"')).toBe(true);
    expect(evaluate('"eng" in identity.groups && identity.claims.department == "eng" && identity.claims.level >= 3')).toBe(true);
    expect(evaluate('"hwk" in identity.amr && identity.acr == "phr" && request.time - identity.auth_time < duration("1h")')).toBe(true);
    expect(evaluate('device.enrolled && device.owner_match && device.posture.managed && device.posture.trust in ["medium", "high"]')).toBe(true);
    expect(evaluate('!device.stale && request.time - device.posture.last_check_in < duration("48h")')).toBe(true);
    expect(evaluate('risk.score < 0.5 && !risk.flagged && risk.model_version == "v3"')).toBe(true);
  });

  it('call the helpers', () => {
    expect(evaluate('ip_in(request.ip, "10.0.0.0/8") && !ip_in(request.ip, "2001:db8::/32")')).toBe(true);
    expect(evaluate('hour_in(request.time, "Europe/Berlin") == 10 && weekday_in(request.time, "Europe/Berlin") == 1')).toBe(true);
    expect(evaluate('hour_in(request.time, "America/Los_Angeles") == 1')).toBe(true);
    expect(evaluate('glob(request.path, "/api/repos/**") && !glob(request.path, "/api/*")')).toBe(true);
  });

  it('an absent field is an error to read, and has() tests it', () => {
    const anonymous: PolicyInput = { ...FULL, identity: {}, device: {}, risk: {} };
    expect(evaluate('risk.score > 0.8', anonymous)).toEqual({ error: 'field not found: score' });
    expect(evaluate('has(risk.score) && risk.score > 0.8', anonymous)).toBe(false);
    expect(evaluate('device.posture.managed', anonymous)).toEqual({ error: expect.stringMatching(/posture/) });
    expect(evaluate('has(identity.acr)', { ...FULL, identity: { ...FULL.identity, acr: undefined } })).toBe(false);
  });

  it('a helper that fails is an error, not false', () => {
    const weird: PolicyInput = { ...FULL, request: { ...FULL.request, ip: 'not-an-ip' } };
    expect(evaluate('ip_in(request.ip, "10.0.0.0/8")', weird)).toEqual({ error: expect.stringMatching(/not an IPv4 or IPv6 address/) });
    expect(evaluate('!ip_in(request.ip, "10.0.0.0/8")', weird)).toEqual({ error: expect.stringMatching(/not an IPv4/) });
  });

  it('a dyn condition that is not a bool at run time is an error', () => {
    expect(evaluate('identity.claims.department')).toEqual({ error: 'the condition gave string, not a bool' });
  });
});
