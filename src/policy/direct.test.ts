// direct.ts may answer only where @bufbuild/cel answers the same. These tests run
// conditions both ways over many inputs — well-formed, with fields missing, and with
// values of the wrong type — and fail on any input where the compiled path gives a
// boolean that differs from @bufbuild/cel's result, or a boolean where @bufbuild/cel
// reports an error.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { largeSet, realisticRouteSet } from '../../test/bench/policy-sets.ts';
import { random } from '../../test/helpers/random.ts';
import { compileCondition, runCondition, type CompiledCondition } from './cel.ts';
import { createEvaluator, type Decision } from './evaluate.ts';
import { toBindings, type PolicyInput } from './input.ts';
import { compilePolicyFiles, loadPolicyDir } from './load.ts';
import { createIndex, type PolicySet } from './set.ts';

const AWKWARD = [
  'true',
  'false',
  'request.method == "GET"',
  'request.method != "GET"',
  '"GET" == request.method',
  'request.method in ["GET", "HEAD"]',
  'request.method in ["GET", 1, 2.5]',
  'request.method < "M"',
  'request.route == "code" || !has(request.route)',
  'has(request.route) && request.route == "code"',
  'request.headers["x-tenant"] == "acme"',
  '"x-tenant" in request.headers',
  'has(request.headers.constructor)',
  'request.headers["constructor"] == "x"',
  'request.path.startsWith("/api") && !request.path.endsWith("/merge")',
  'request.path.contains("repos")',
  'glob(request.path, "/api/**") && !glob(request.path, "/api/*/admin")',
  'ip_in(request.ip, "10.0.0.0/8") || ip_in(request.ip, "2001:db8::/32")',
  'hour_in(request.time, "Europe/Berlin") >= 8 && hour_in(request.time, "Europe/Berlin") < 19',
  'weekday_in(request.time, "America/New_York") in [1, 2, 3, 4, 5]',
  'hour_in(identity.auth_time, "UTC") == 8',
  'request.time - identity.auth_time < duration("1h")',
  '"eng" in identity.groups',
  '!("contractor" in identity.groups)',
  'identity.groups == ["eng"]',
  'size(identity.groups) > 1',
  'identity.amr.exists(m, m == "hwk")',
  '"hwk" in identity.amr && identity.acr == "phr"',
  'identity.claims.department == "eng"',
  'identity.claims.level >= 3',
  'identity.claims.level == 3',
  'identity.claims.level > 2.5',
  'identity.claims.level in [1, 2, 3]',
  'identity.claims.admin == true',
  'has(identity.claims.admin)',
  '"admin" in identity.claims',
  'identity.claims.nested.a == "b"',
  'has(identity.claims.nested.a)',
  'identity.claims["team-name"] == "core"',
  'identity.claims.level < identity.claims.limit',
  'identity.claims.department == identity.sub',
  'identity.sub == "alice" ? device.enrolled : false',
  'has(device.posture) ? device.posture.managed : false',
  'device.enrolled && device.owner_match && device.posture.managed && device.posture.trust in ["medium", "high"]',
  '!has(device.posture) || !device.posture.disk_encrypted',
  'has(device.posture.last_check_in)',
  'device.binding == "dpop"',
  'device.enrolled == true',
  'device.stale != false',
  'has(risk.flagged) && risk.flagged',
  'risk.score < 0.5 && !risk.flagged && risk.model_version == "v3"',
  'risk.score >= 1',
  '1 < risk.score',
  'risk.flagged || risk.score > 0.9',
  '"hour" in risk.top_features',
  'risk.flagged && risk.history > 100.0',
  'risk.history > 100',
  // Claims are any JSON: keys that are JavaScript prototype members or protobuf's
  // `$typeName` (which makes an object a message to @bufbuild/cel, not a map).
  'identity.claims.nested.value == true',
  'has(identity.claims.nested.value)',
  'identity.claims.nested.a == "b" && identity.claims.nested.value == "b"',
  '"$typeName" in identity.claims.nested',
  'identity.claims.nested["$typeName"] == "x"',
  'has(identity.claims.constructor)',
  'identity.claims.constructor == "x"',
  'identity.claims["__proto__"].a == "b"',
  'has(identity.claims.__proto__)',
  '"__proto__" in identity.claims',
  'identity.claims.toString == "x"',
  'identity.claims.nested.toString == "x"',
  'identity.claims.nested.constructor.name == "Object"',
  '"hasOwnProperty" in identity.claims.nested',
  'identity.claims.level == 3.0',
  'identity.claims.level > 1e300',
  'identity.claims.big >= 9007199254740993',
  'identity.claims.department == ""',
  'identity.claims.nested.a in ["b", ""]',
  'identity.claims.list[0] == 1',
  '1 in identity.claims.list',
  '"b" in identity.claims.nested.a',
  'has(request.headers.__proto__)',
  'request.headers["__proto__"] == "x"',
  'request.headers["$typeName"] == "x"',
];

function sourcesOfSets(): string[] {
  const out: string[] = [];
  const shipped = loadPolicyDir(join(import.meta.dirname, '../../policies'), undefined);
  if (!shipped.ok) throw new Error('shipped policies do not load');
  const bench = compilePolicyFiles([...realisticRouteSet('code'), ...largeSet('code', 15).slice(10)], undefined);
  if (!bench.ok) throw new Error('bench policies do not load');
  for (const set of [shipped.set, bench.set]) for (const p of set.policies) for (const r of p.rules) out.push(r.condition.source);
  return out;
}

const CONDITIONS: [string, CompiledCondition][] = [...new Set([...AWKWARD, ...sourcesOfSets()])].map((source) => {
  const c = compileCondition(source);
  if (!c.ok) throw new Error(`${source}: ${JSON.stringify(c.problems)}`);
  return [source, c.condition];
});

const BASE: PolicyInput = {
  request: {
    method: 'GET',
    host: 'code.example.com',
    path: '/api/repos/zt/merge',
    route: 'code',
    ip: '10.1.2.3',
    headers: { 'user-agent': 'git/2.45', 'x-tenant': 'acme' },
    time: new Date('2024-06-03T08:30:00Z'),
  },
  identity: {
    sub: 'alice',
    issuer: 'https://idp.example.com/',
    groups: ['eng', 'oncall'],
    claims: { department: 'eng', level: 3, limit: 5, admin: false, 'team-name': 'core', nested: { a: 'b' }, list: [1, 2], big: 2 ** 53 },
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

/** JSON values a token's claims can hold, parsed as the gateway parses a token's payload. */
const JSON_SHAPES: readonly unknown[] = [
  '{"$typeName": "google.protobuf.BoolValue", "value": true, "a": "b"}',
  '{"$typeName": "google.protobuf.StringValue", "value": "b"}',
  '{"$typeName": "google.protobuf.Struct", "fields": {}}',
  '{"$typeName": "x", "a": "b"}',
  '{"$typeName": 1, "a": "b"}',
  '{"__proto__": {"a": "b"}, "a": "b"}',
  '{"__proto__": "x"}',
  '{"constructor": {"name": "Object"}, "a": "b"}',
  '{"toString": "x", "valueOf": 1, "hasOwnProperty": true, "a": "b"}',
  '{"a": {"b": {"c": [1, [2, {"d": null}]]}}}',
  '[[1], {"a": "b"}, null, true, "", 1.5]',
  '[1, 2.0, 3]',
  '9007199254740993',
  '1e308',
  '-0.0',
  '3.0',
  '""',
  'null',
  '{}',
  '[]',
].map((text) => JSON.parse(text) as unknown);

type Mutable = { -readonly [K in keyof PolicyInput]: Record<string, unknown> };

/** Values a field may hold in a bad input: other types, null, nested structures, a Date where none is bound. */
const ODD: readonly unknown[] = [
  undefined,
  null,
  '',
  'GET',
  'eng',
  0,
  1,
  3,
  2.5,
  Number.NaN,
  -0,
  7n,
  true,
  false,
  [],
  ['eng', 'hwk'],
  ['eng', 3],
  [null],
  {},
  { a: 'b' },
  new Date('2024-06-03T08:30:00Z'),
  Object.assign(Object.create(null) as object, { a: 'b' }),
  { constructor: 'x', a: 'b' },
  // Every JSON shape a claim can take, and the keys that mean something to JavaScript or
  // to @bufbuild/cel: JSON.parse makes `__proto__` an own key, as a token's claims do.
  ...JSON_SHAPES,
];

const PATHS: readonly string[][] = [
  ['request', 'method'],
  ['request', 'route'],
  ['request', 'path'],
  ['request', 'ip'],
  ['request', 'time'],
  ['request', 'headers'],
  ['identity', 'sub'],
  ['identity', 'groups'],
  ['identity', 'claims'],
  ['identity', 'amr'],
  ['identity', 'acr'],
  ['identity', 'auth_time'],
  ['device', 'enrolled'],
  ['device', 'owner_match'],
  ['device', 'posture'],
  ['device', 'stale'],
  ['device', 'binding'],
  ['risk', 'score'],
  ['risk', 'flagged'],
  ['risk', 'top_features'],
];

const SUB_PATHS: readonly [string[], string][] = [
  [['identity', 'claims'], 'level'],
  [['identity', 'claims'], 'admin'],
  [['identity', 'claims'], 'department'],
  [['identity', 'claims'], 'nested'],
  [['identity', 'claims'], 'team-name'],
  [['identity', 'claims'], 'constructor'],
  [['identity', 'claims'], '__proto__'],
  [['identity', 'claims'], 'toString'],
  [['identity', 'claims'], 'list'],
  [['identity', 'claims'], 'big'],
  [['request', 'headers'], '__proto__'],
  [['request', 'headers'], '$typeName'],
  [['device', 'posture'], 'managed'],
  [['device', 'posture'], 'trust'],
  [['device', 'posture'], 'last_check_in'],
  [['request', 'headers'], 'x-tenant'],
  [['request', 'headers'], 'constructor'],
];

const TIMES = [
  '2024-06-03T08:30:00Z',
  '2024-06-08T23:59:59.999Z',
  '2024-03-31T00:59:59.999Z', // the last millisecond of winter time in Berlin
  '2024-03-31T01:00:00.000Z',
  '2024-11-03T05:59:59.999Z', // New York falls back at 06:00 UTC
  '2024-11-03T06:00:00.000Z',
  '1965-07-01T12:00:00Z',
  '1969-12-31T23:59:59.999Z',
];
const IPS = ['10.1.2.3', '11.0.0.1', '::ffff:10.9.9.9', '2001:db8::1', 'not-an-ip', ''];

function variant(rnd: () => number): PolicyInput {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const input = structuredClone(BASE) as unknown as Mutable;
  input.request.time = new Date(pick(TIMES));
  input.request.ip = pick(IPS);
  input.request.method = pick(['GET', 'HEAD', 'POST', 'DELETE', 'get']);
  for (let n = Math.floor(rnd() * 4); n > 0; n--) {
    const [record, field] = pick(PATHS);
    const value = pick(ODD);
    // Dates invalid or not are bound only in the declared timestamp fields; a bad one there is another test.
    if (field === 'time' || field === 'auth_time') continue;
    if (field === 'headers' && (value === null || typeof value !== 'object' || value instanceof Date)) continue;
    if (value === undefined) delete input[record as keyof Mutable][field!];
    else input[record as keyof Mutable][field!] = value;
  }
  for (let n = Math.floor(rnd() * 3); n > 0; n--) {
    const [[record, field], key] = pick(SUB_PATHS);
    const parent = input[record as keyof Mutable][field!];
    if (parent === null || typeof parent !== 'object' || Array.isArray(parent) || parent instanceof Date) continue;
    const value = pick(ODD);
    if (key === 'last_check_in' && value instanceof Date) continue;
    // Defined, not assigned: `parent.__proto__ = v` would set the prototype, not a key.
    Object.defineProperty(parent, key, { value, enumerable: true, writable: true, configurable: true });
  }
  if (rnd() < 0.2) input.device = {};
  if (rnd() < 0.1) input.risk = {};
  return input as unknown as PolicyInput;
}

describe('direct.ts answers as @bufbuild/cel does, or not at all', () => {
  it('every condition used in the shipped and the benchmark policies takes the compiled path', () => {
    const reference = sourcesOfSets().filter((s) => compileCondition(s).ok && !(compileCondition(s) as { condition: CompiledCondition }).condition.direct);
    // The one exception: timestamp arithmetic and duration() are left to @bufbuild/cel.
    const withDuration = sourcesOfSets().filter((s) => s.includes('request.time - identity.auth_time <= duration("10m")'));
    expect(withDuration.length).toBeGreaterThan(0);
    expect(reference).toEqual(withDuration);
  });

  it('over 3,000 inputs, well-formed and not, every compiled answer is @bufbuild/cel’s', () => {
    const rnd = random(5);
    let compared = 0;
    let direct = 0;
    const mismatches: string[] = [];
    for (let n = 0; n < Number(process.env.DIRECT_INPUTS ?? 3000); n++) {
      const input = n === 0 ? BASE : variant(rnd);
      const bindings = toBindings(input);
      for (const [source, condition] of CONDITIONS) {
        const expected = runCondition(condition, bindings);
        const got = condition.direct?.(input);
        compared++;
        if (got === undefined) continue;
        direct++;
        if (got !== expected) mismatches.push(`${source} on input #${n}: compiled ${got}, @bufbuild/cel ${JSON.stringify(expected)}`);
      }
    }
    expect(mismatches.slice(0, 10)).toEqual([]);
    // The compiled path must actually be exercised, not unsure everywhere.
    expect(direct / compared).toBeGreaterThan(0.5);
    // DIRECT_INPUTS=30000 for a longer run; on a slow shared machine 3,000 take about 3 s.
  }, 600_000);

  it('answers the well-formed input for every condition it compiles', () => {
    for (const [source, condition] of CONDITIONS) {
      if (condition.direct === undefined) continue;
      const expected = runCondition(condition, toBindings(BASE));
      if (typeof expected !== 'boolean') continue;
      expect(condition.direct(BASE), source).toBe(expected);
    }
  });

  it('is unsure wherever @bufbuild/cel reports an error, so errors come from there', () => {
    const missing = { ...BASE, risk: {} };
    for (const source of ['risk.score > 0.5', 'risk.flagged', 'identity.claims.nope == "x"', 'ip_in(request.ip, "10.0.0.0/8")']) {
      const c = compileCondition(source);
      if (!c.ok) throw new Error(source);
      const input = source.startsWith('ip_in') ? { ...BASE, request: { ...BASE.request, ip: 'not-an-ip' } } : missing;
      expect(runCondition(c.condition, toBindings(input)), source).toHaveProperty('error');
      expect(c.condition.direct?.(input), source).toBeUndefined();
    }
  });

  // A caller in process could hand over shapes toPolicyInput never builds. CEL binds a
  // record with Object.entries: an array becomes the map {"0": …}, a non-enumerable
  // property is not there. Reading either differently turned a deny into an allow.
  it('sees a record given as an array, or with a hidden property, as CEL does', () => {
    const hidden = Object.defineProperty({}, 'x-internal', { value: '1', enumerable: false });
    for (const headers of [['x-internal'], hidden]) {
      const input = { ...BASE, request: { ...BASE.request, headers } } as unknown as PolicyInput;
      for (const source of ['"x-internal" in request.headers', 'has(request.headers.x_internal)', 'request.headers["x-internal"] == "1"']) {
        const c = compileCondition(source);
        if (!c.ok) throw new Error(source);
        const expected = runCondition(c.condition, toBindings(input));
        expect(expected, source).not.toBe(true);
        const got = c.condition.direct?.(input);
        if (got !== undefined) expect(got, source).toBe(expected);
      }
    }
  });

  it('reads own fields only: a polluted Object.prototype does not supply an absent one', () => {
    const c = compileCondition('has(device.enrolled) && device.enrolled');
    if (!c.ok) throw new Error('compile');
    const input = { ...BASE, device: { binding: 'none' as const } };
    const proto = Object.prototype as Record<string, unknown>;
    proto.enrolled = true;
    const read = compileCondition('device.enrolled');
    if (!read.ok) throw new Error('compile');
    try {
      expect(c.condition.direct!(input)).toBe(false);
      expect(runCondition(c.condition, toBindings(input))).toBe(false);
      expect(runCondition(read.condition, toBindings(input))).toEqual({ error: 'field not found: enrolled' });
      expect(read.condition.direct!(input)).toBeUndefined();
    } finally {
      delete proto.enrolled;
    }
  });

  it('writes policy text into the generated code only as JSON string literals', () => {
    // A literal that would end a JavaScript string and run code if pasted raw.
    const nasty = '"); throw new Error("injected"); ("';
    const c = compileCondition(`request.method == ${JSON.stringify(nasty)} || request.headers[${JSON.stringify(nasty)}] == "x"`);
    if (!c.ok) throw new Error('compile');
    expect(c.condition.direct).toBeDefined();
    expect(c.condition.direct!(BASE)).toBeUndefined(); // the header is absent: unsure
    expect(c.condition.direct!({ ...BASE, request: { ...BASE.request, method: nasty } })).toBe(true);
  });
});

describe('decisions with the compiled conditions are the decisions of @bufbuild/cel alone', () => {
  /** The same set with every condition's compiled path removed. */
  function referenceOnly(set: PolicySet): PolicySet {
    const policies = set.policies.map((p) => ({
      ...p,
      rules: p.rules.map((r) => ({ ...r, condition: { source: r.condition.source, program: r.condition.program } })),
    }));
    return { ...set, policies, candidates: createIndex(policies) };
  }
  const withoutTime = (d: Decision) => ({ ...d, evalMicros: 0 });

  it('over 1,000 inputs, for the shipped policies, the benchmark route and the awkward conditions', () => {
    const files = [
      ...['code-read-encrypted', 'code-read', 'demo-echo', 'payroll', 'risk-flagged', 'unmanaged-writes'].map((name) => {
        const file = join(import.meta.dirname, '../../policies', `${name}.yaml`);
        return { file, text: readFileSync(file, 'utf8') };
      }),
      ...realisticRouteSet('code'),
      // Each awkward condition as a deny, a step_up and an allow rule, one policy each, for the code route.
      ...AWKWARD.map((when, n) => ({
        file: `awkward-${n}.yaml`,
        text: [
          'apiVersion: zt-gateway/v1',
          `name: awkward-${n}`,
          'appliesTo: { routes: [code] }',
          ...(n % 4 === 0 ? ['mode: report-only'] : []),
          'rules:',
          ...(['deny', 'step_up', 'allow'] as const).flatMap((effect) => [
            `  - name: ${effect}`,
            `    effect: ${effect}`,
            `    when: ${JSON.stringify(`${when} && request.method == ${JSON.stringify(effect === 'allow' ? 'GET' : effect === 'deny' ? 'DELETE' : 'POST')}`)}`,
            ...(effect === 'step_up' ? ['    stepUp: { acrValues: [phr] }'] : []),
          ]),
        ].join('\n'),
      })),
    ];
    const compiled = compilePolicyFiles(files, undefined);
    if (!compiled.ok) throw new Error(JSON.stringify(compiled.issues.slice(0, 3)));
    const fast = createEvaluator(compiled.set);
    const reference = createEvaluator(referenceOnly(compiled.set));
    const rnd = random(11);
    for (let n = 0; n < 1000; n++) {
      const input = n === 0 ? BASE : variant(rnd);
      expect(withoutTime(fast.evaluate(input)), `input #${n}`).toEqual(withoutTime(reference.evaluate(input)));
      if (n % 10 === 0) {
        const a = fast.explain(input);
        const b = reference.explain(input);
        expect({ ...a, decision: withoutTime(a.decision) }, `explain, input #${n}`).toEqual({ ...b, decision: withoutTime(b.decision) });
      }
    }
  }, 600_000);
});
