import { describe, it, expect } from 'vitest';
import { formatIssue } from '../core/diagnostics.ts';
import { createEvaluator, type PolicyInput } from './evaluate.ts';
import { compilePolicyFiles } from './load.ts';
import { decisionFromJson, decisionRecord, inputFromJson, inputToJson, PolicyInputError } from './record.ts';

const FULL: PolicyInput = {
  request: {
    method: 'POST',
    host: 'code.example.com',
    path: '/api/repos/zt/merge',
    route: 'code',
    ip: '10.1.2.3',
    headers: { 'user-agent': 'git/2.45' },
    time: new Date('2024-06-03T08:30:00.123Z'),
  },
  identity: {
    sub: 'alice',
    issuer: 'https://idp.example.com/',
    groups: ['eng'],
    claims: { department: 'eng', level: 3, nested: { a: [1, null] } },
    amr: ['pwd', 'hwk'],
    acr: 'phr',
    auth_time: new Date('2024-06-03T08:00:00Z'),
  },
  device: {
    id: 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs',
    binding: 'dpop',
    enrolled: true,
    owner_match: true,
    posture: { managed: true, disk_encrypted: false, os: 'macOS', os_version: '14.5', trust: 'high', last_check_in: new Date('2024-06-02T00:00:00Z') },
    stale: false,
    fingerprint_changed: false,
  },
  risk: { score: 0.12, flagged: false, top_features: ['hour'], model_version: 'v3', history: 250 },
};

/** The PolicyInputError `fn` throws; fails the test if it throws nothing or something else. */
function caught(fn: () => unknown): PolicyInputError {
  try {
    fn();
  } catch (e) {
    if (e instanceof PolicyInputError) return e;
    throw e;
  }
  throw new Error('expected a PolicyInputError');
}

/** What inputFromJson says about `value`, one "path: message" per issue. */
const problems = (value: unknown): string[] => caught(() => inputFromJson(value)).message.split('\n');

const json = (input: PolicyInput) => JSON.parse(JSON.stringify(inputToJson(input))) as Record<string, Record<string, unknown>>;

describe('inputToJson / inputFromJson', () => {
  it('round-trips every field through JSON text, Dates included', () => {
    const text = JSON.stringify(inputToJson(FULL));
    expect(text).toContain('"time":"2024-06-03T08:30:00.123Z"');
    expect(text).toContain('"last_check_in":"2024-06-02T00:00:00.000Z"');
    const back = inputFromJson(JSON.parse(text));
    expect(back).toEqual(FULL);
    expect(back.request.time).toBeInstanceOf(Date);
    expect(back.identity.auth_time).toBeInstanceOf(Date);
  });

  it('an absent field stays absent (no undefined keys, no defaults)', () => {
    const input: PolicyInput = { ...FULL, request: { ...FULL.request, route: undefined }, device: {}, risk: {} };
    const j = json(input);
    expect('route' in j.request!).toBe(false);
    const back = inputFromJson(j);
    expect('route' in back.request).toBe(false);
    expect(back.device).toEqual({});
  });

  it('identity, device, risk and headers may be left out: empty, nothing known', () => {
    const back = inputFromJson({ request: { method: 'GET', host: 'h', path: '/', ip: '10.0.0.1', time: '2024-06-03T08:30:00+02:00' } });
    expect(back).toEqual({
      request: { method: 'GET', host: 'h', path: '/', ip: '10.0.0.1', headers: {}, time: new Date('2024-06-03T06:30:00Z') },
      identity: {},
      device: {},
      risk: {},
    });
  });

  it('names every bad field, with the path to it', () => {
    const bad = json(FULL);
    bad.request!.time = 1717403400;
    bad.request!.headers = { accept: ['a', 'b'] };
    delete bad.request!.ip;
    bad.identity!.groups = 'eng';
    bad.device!.enroled = true;
    bad.device!.binding = 'bearer';
    (bad.device!.posture as Record<string, unknown>).trust = 'total';
    bad.risk!.score = null;
    expect(problems(bad)).toEqual([
      'request.headers.accept: expected a string, got an array',
      'request.time: expected an RFC 3339 time with a zone such as "2024-06-03T08:30:00Z", got number 1717403400',
      'request.ip: required field is missing',
      'identity.groups: expected a list, got "eng"',
      'device.binding: expected one of "dpop", "mtls", "none", got "bearer"',
      'device.posture.trust: expected one of "low", "medium", "high", got "total"',
      'device.enroled: unknown field "enroled" (known: id, binding, enrolled, owner_match, posture, stale, fingerprint_changed)',
      'risk.score: null is not a value here: leave the field out when it is absent',
    ]);
  });

  it('a time without a zone is rejected (it would shift with the reader’s time zone)', () => {
    const bad = json(FULL);
    bad.request!.time = '2024-06-03T08:30:00';
    expect(problems(bad)).toEqual([expect.stringMatching(/^request\.time: expected an RFC 3339 time with a zone/)]);
    bad.request!.time = '2024-13-45T08:30:00Z';
    expect(problems(bad)).toEqual([expect.stringMatching(/^request\.time: /)]);
  });

  it('not an object at all', () => {
    expect(problems([])).toEqual(['(input): expected an object, got an array']);
    expect(problems({})).toEqual(['request: required field is missing']);
  });

  it('PolicyInputError has a code and structured issues', () => {
    const e = caught(() => inputFromJson({ request: 3 }));
    expect(e.code).toBe('ERR_POLICY_INPUT_INVALID');
    expect(PolicyInputError.code).toBe('ERR_POLICY_INPUT_INVALID');
    expect(e.issues).toEqual([{ path: ['request'], message: 'expected an object, got number 3' }]);
  });
});

const POLICY = `apiVersion: zt-gateway/v1
name: code
rules:
  - name: eng
    effect: allow
    when: '"eng" in identity.groups'
  - name: unmanaged-write
    effect: deny
    when: request.method == "POST" && !device.posture.managed
`;
const TRIAL = `apiVersion: zt-gateway/v1
name: trial
mode: report-only
rules:
  - name: unencrypted
    effect: deny
    when: '!device.posture.disk_encrypted'
`;

function evaluator() {
  const result = compilePolicyFiles(
    [
      { file: 'a.yaml', text: POLICY },
      { file: 'b.yaml', text: TRIAL },
    ],
    undefined,
  );
  if (!result.ok) throw new Error(result.issues.map(formatIssue).join('\n'));
  return { evaluator: createEvaluator(result.set), hash: result.set.hash };
}

describe('decisionRecord / decisionFromJson', () => {
  it('the log line: who, what, which rules, report-only findings, set hash, and the input', () => {
    const { evaluator: e, hash } = evaluator();
    const decision = e.evaluate(FULL);
    const record = decisionRecord('req-1', decision, FULL, hash);
    expect(record).toEqual({
      log: 'decision',
      reqId: 'req-1',
      sub: 'alice',
      device: FULL.device.id,
      route: 'code',
      effect: 'allow',
      rules: [{ policy: 'code', rule: 'eng', effect: 'allow' }],
      reportOnly: [{ policy: 'trial', rule: 'unencrypted', effect: 'deny', wouldBe: 'deny' }],
      policySet: hash,
      evalMicros: decision.evalMicros,
      errors: [],
      input: inputToJson(FULL),
    });
    // Through pino: the logger adds its own fields, which reading back ignores.
    const line = JSON.stringify({ level: 30, time: 1717403400000, pid: 1, hostname: 'gw-1', ...record, msg: 'decision' });
    const back = decisionFromJson(JSON.parse(line));
    expect(back.record).toEqual(JSON.parse(JSON.stringify(record)));
    expect(back.input).toEqual(FULL);
    expect(e.evaluate(back.input).effect).toBe('allow');
  });

  it('leaves out sub, device and route when the input has none; keeps rule errors', () => {
    const { evaluator: e, hash } = evaluator();
    const input: PolicyInput = { request: { ...FULL.request, route: undefined }, identity: {}, device: {}, risk: {} };
    const record = decisionRecord('req-2', e.evaluate(input), input, hash);
    expect(Object.keys(record)).not.toContain('sub');
    expect(Object.keys(record)).not.toContain('device');
    expect(Object.keys(record)).not.toContain('route');
    // POST without a posture: the deny rule cannot be evaluated, which counts as a match.
    expect(record).toMatchObject({
      effect: 'deny',
      rules: [{ policy: 'code', rule: 'unmanaged-write', effect: 'deny' }],
      errors: [
        { policy: 'code', rule: 'unmanaged-write', message: expect.any(String) },
        { policy: 'trial', rule: 'unencrypted', message: expect.any(String) },
      ],
    });
  });

  it('a record that is not what the gateway writes is rejected, naming each field', () => {
    const { evaluator: e, hash } = evaluator();
    const record = JSON.parse(JSON.stringify(decisionRecord('req-1', e.evaluate(FULL), FULL, hash))) as Record<string, unknown>;
    record.effect = 'permit';
    delete record.reqId;
    (record.input as { request: { time: string } }).request.time = 'yesterday';
    expect(caught(() => decisionFromJson(record)).message.split('\n')).toEqual([
      'effect: expected one of "allow", "deny", "step_up", got "permit"',
      'reqId: required field is missing',
      'input.request.time: expected an RFC 3339 time with a zone such as "2024-06-03T08:30:00Z", got "yesterday"',
    ]);
  });

  it('a hand-made record may leave out reportOnly, errors and evalMicros', () => {
    const { record } = decisionFromJson({
      log: 'decision',
      reqId: 'r',
      effect: 'deny',
      rules: [],
      policySet: 'x',
      input: { request: { method: 'GET', host: 'h', path: '/', ip: '::1', time: '2024-06-03T08:30:00Z' } },
    });
    expect(record).toMatchObject({ reportOnly: [], errors: [], evalMicros: 0 });
  });
});
