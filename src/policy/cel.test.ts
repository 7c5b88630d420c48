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
  risk: { score: 0.12, flagged: false, top_features: ['hour', 'bytes'], model_version: 'v3', history: 250 },
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
    expect(evaluate('risk.history > 200.0 && risk.history < 300.0')).toBe(true);
    expect(evaluate('risk.history > 200 && !(risk.history > 250)')).toBe(true); // int literals compare with the double
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

// Names of Object.prototype members once reached the checker's field tables: the
// condition passed (`has(request.toString)`) or the checker threw, which on a hot reload
// ended the gateway's process.
describe('compileCondition: names that JavaScript objects inherit are not fields', () => {
  const MEMBERS = ['constructor', '__proto__', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', 'propertyIsEnumerable', 'toLocaleString', '__defineGetter__'];

  it.each(MEMBERS)('request.%s, identity.…, device.posture.…, has(…): a type error with its position, never a pass or a throw', (name) => {
    const cases: [string, string, number][] = [
      [`request.${name} == "x"`, 'request', 8],
      [`identity.${name} == "x"`, 'identity', 9],
      [`has(request.${name})`, 'request', 1],
      [`device.posture.${name} == "x"`, 'device.posture', 15],
      [`risk.${name} == 1.0`, 'risk', 5],
    ];
    for (const [source, object, col] of cases) {
      expect(problems(source), source).toEqual([{ line: 1, col, kind: 'type', message: expect.stringContaining(`no field "${name}" in ${object} (fields: `) }]);
    }
    expect(problems(`${name} == 1`)).toEqual([expect.objectContaining({ kind: 'type', message: expect.stringContaining(`undeclared reference to "${name}"`) })]);
    expect(problems(`request.path.${name}() == ""`)[0]!.message).toMatch(new RegExp(`no method "${name.replace(/_/g, '_')}"`));
    expect(problems(`${name}(request.path)`)[0]!.message).toBe(`undeclared function "${name}"`);
  });

  it('inside maps and JSON claims they are keys like any other, read only when present', () => {
    expect(compileCondition('request.headers.constructor == "x" && has(identity.claims.toString)').ok).toBe(true);
    const claims = JSON.parse('{"__proto__": {"a": "b"}}') as Record<string, unknown>;
    const input = { ...FULL, request: { ...FULL.request, headers: { constructor: 'x' } }, identity: { ...FULL.identity, claims } };
    expect(evaluate('request.headers.constructor == "x"', input)).toBe(true);
    expect(evaluate('has(request.headers.toString)', input)).toBe(false);
    expect(evaluate('identity.claims["__proto__"].a == "b"', input)).toBe(true);
    expect(evaluate('has(identity.claims.valueOf)', input)).toBe(false);
    // @bufbuild/cel takes an object whose own "constructor" is not Object's for no map at
    // all: every read of such claims is an error, which never grants.
    const odd = { ...FULL, identity: { ...FULL.identity, claims: JSON.parse('{"constructor": "x", "a": "b"}') as Record<string, unknown> } };
    expect(evaluate('identity.claims.a == "b"', odd)).toEqual({ error: expect.stringMatching(/Unsupported input/) });
  });
});

describe('compileCondition: any text gives a result, never an exception', () => {
  const TOO_DEEP = /nests too deeply \(at most 100 levels\)/;

  it('deep nesting is a syntax problem, whether the parser or the checker would run out of stack', () => {
    expect(problems(`${'('.repeat(500)}true${')'.repeat(500)}`)).toEqual([{ line: 1, col: 101, kind: 'syntax', message: expect.stringMatching(TOO_DEEP) }]);
    expect(problems(`${'['.repeat(5000)}${']'.repeat(5000)} == []`)[0]!.message).toMatch(TOO_DEEP);
    // No brackets, but a left-deep tree: `1 + 1 + … + 1` and long selection chains; past
    // the limit whether or not a pass would run out of stack on it.
    expect(problems(`${Array(150).fill('1').join(' + ')} > 0`)[0]).toMatchObject({ kind: 'syntax', message: expect.stringMatching(TOO_DEEP) });
    expect(problems(`${Array(2000).fill('1').join(' + ')} > 0`)[0]).toMatchObject({ kind: 'syntax', message: expect.stringMatching(TOO_DEEP) });
    expect(problems(`has(request${'.a'.repeat(3000)})`)[0]!.message).toMatch(TOO_DEEP);
    expect(problems(`request.path${'.size()'.repeat(1)}${' + 0'.repeat(3000)} > 0`)[0]!.message).toMatch(TOO_DEEP);
    // Up to the limit is fine, and brackets inside strings do not count.
    expect(compileCondition(`${'('.repeat(90)}true${')'.repeat(90)}`).ok).toBe(true);
    expect(compileCondition(`request.path == "${'('.repeat(500)}" && request.path != '${'['.repeat(500)}'`).ok).toBe(true);
    // && and || chains are balanced by the parser: 1,000 terms are 11 levels.
    expect(compileCondition(Array(1000).fill('request.method == "GET"').join(' || ')).ok).toBe(true);
  });

  it('huge literals: integers past 64 bits are a type error; text past 32,768 characters is refused before parsing', () => {
    expect(problems(`${'9'.repeat(400)} > 0`)).toEqual([{ line: 1, col: 1, kind: 'type', message: 'integer literal out of range for a 64-bit int' }]);
    expect(problems('9223372036854775808 > 0')[0]!.message).toMatch(/out of range/);
    expect(compileCondition('9223372036854775807 > 0 && -9223372036854775808 < 0 && 18446744073709551615u > 0u').ok).toBe(true);
    expect(problems('18446744073709551616u > 0u')[0]!.message).toBe('integer literal out of range for a 64-bit uint');
    expect(problems(`request.path == "${'a'.repeat(32_768)}"`)[0]!.message).toBe('the condition is 32786 characters long, over the limit of 32768');
    expect(evaluate(`request.path != "${'a'.repeat(32_000)}"`)).toBe(true);
  });

  it('empty, blank and odd text', () => {
    for (const source of ['', ' ', '\n', '//', '"', "'''", '\\u0000', '\u0000', 'request.', '.', '}', 'r"', '@', '`', '\uD800', '🙂 == 1']) {
      const r = compileCondition(source);
      expect(r.ok, JSON.stringify(source)).toBe(false);
    }
    expect(compileCondition('request.path == "\\u0028\\U0001F642\\x41\\101"').ok).toBe(true);
  });
});

describe('matches(): bounded', () => {
  it('keeps CEL semantics: RE2 syntax, a partial match', () => {
    expect(evaluate('request.path.matches("repos/[a-z]+/merge$")')).toBe(true);
    expect(evaluate('request.path.matches("^repos")')).toBe(false);
    expect(evaluate('identity.sub.matches("(?i)^ALICE$")')).toBe(true);
    // RE2 refuses what a backtracking engine would take: backreferences and lookaround.
    expect(problems('request.path.matches("(a)\\\\1")')[0]!.message).toMatch(/invalid escape|backreference|\\\\1/);
    expect(problems('request.path.matches("a(?=b)")')[0]!.message).toMatch(/perl operator|\(\?=/);
  });

  it('a string over 1,024 characters is an error, never a match, whatever the pattern', () => {
    const at = (path: string): PolicyInput => ({ ...FULL, request: { ...FULL.request, path } });
    expect(evaluate('request.path.matches("^/")', at(`/${'a'.repeat(1023)}`))).toBe(true);
    expect(evaluate('request.path.matches("^/")', at(`/${'a'.repeat(1024)}`))).toEqual({ error: 'matches: the string is 1025 characters, over the limit of 1024' });
    expect(evaluate('!request.path.matches("admin")', at(`/${'a'.repeat(8191)}`))).toEqual({ error: expect.stringMatching(/8192 characters/) });
  });

  it('a pattern from request data is compiled once per distinct value; a broken one is an error; past 1,024 characters too', () => {
    const pattern = (p: string): PolicyInput => ({ ...FULL, request: { ...FULL.request, headers: { 'x-re': p } } });
    expect(evaluate('request.path.matches(request.headers["x-re"])', pattern('^/api/'))).toBe(true);
    expect(evaluate('request.path.matches(request.headers["x-re"])', pattern('('))).toEqual({ error: expect.stringMatching(/missing closing/) });
    expect(evaluate('request.path.matches(request.headers["x-re"])', pattern('a'.repeat(1025)))).toEqual({ error: expect.stringMatching(/pattern is 1025 characters/) });
  });
});
