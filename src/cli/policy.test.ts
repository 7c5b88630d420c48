import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HELPER_DOCS, POLICY_CONTEXT } from '../policy/cel.ts';
import type { CelT } from '../policy/check.ts';
import { createEvaluator } from '../policy/evaluate.ts';
import { loadPolicyDir } from '../policy/load.ts';
import { decisionRecord, inputFromJson, inputToJson } from '../policy/record.ts';
import { runPolicyCommand } from './policy.ts';

const EXAMPLES = resolve(import.meta.dirname, '../../policies');

let tmp: string;
let n = 0;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ztgw-cli-policy-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function capture() {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString('utf8')));
  return { stream, text: () => text };
}

async function run(...args: string[]) {
  const out = capture();
  const err = capture();
  const code = await runPolicyCommand(args, out.stream, err.stream);
  return { code, out: out.text(), err: err.text() };
}

/** A fresh directory holding `files` (relative path → text). */
function fixture(files: Record<string, string>): string {
  const dir = join(tmp, `case-${++n}`);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

/** A copy of the shipped examples, with `edits` applied (file → [from, to] pairs, each required to match). */
function examplesWith(edits: Record<string, [string, string][]> = {}, remove: string[] = []): string {
  const dir = join(tmp, `examples-${++n}`);
  cpSync(EXAMPLES, dir, { recursive: true });
  for (const [file, pairs] of Object.entries(edits)) {
    let text = readFileSync(join(dir, file), 'utf8');
    for (const [from, to] of pairs) {
      if (!text.includes(from)) throw new Error(`"${from}" not in ${file}`);
      text = text.replace(from, () => to);
    }
    writeFileSync(join(dir, file), text);
  }
  for (const file of remove) rmSync(join(dir, file));
  return dir;
}

/** "line:col" of the first occurrence of `needle` in `text`. */
function at(text: string, needle: string): string {
  const index = text.indexOf(needle);
  if (index < 0) throw new Error(`"${needle}" not in text`);
  const before = text.slice(0, index);
  return `${before.split('\n').length}:${index - before.lastIndexOf('\n')}`;
}

const gatewayConfig = (routes: string[], extra = '') =>
  `server:
  listen: { port: 8080 }
identity:
  issuers:
    - name: corp
      issuer: https://idp.example.com/
      audiences: [zt-gateway]
      algorithms: [ES256]
      jwksUrl: https://idp.example.com/jwks.json
routes:
${routes.map((r) => `  - name: ${r}\n    pathPrefix: /${r}/\n    upstream: http://127.0.0.1:8081\n`).join('')}${extra}`;

const POLICY = `apiVersion: zt-gateway/v1
name: office
rules:
  - name: eng
    effect: allow
    when: '"eng" in identity.groups'
`;

const REQUEST = { method: 'GET', host: 'code.example.com', path: '/api/repos', route: 'code', ip: '10.20.0.7', time: '2024-06-03T08:30:00Z' };

/** An engineer reading code from her managed, unencrypted laptop on a Monday morning. */
const CTX = {
  request: REQUEST,
  identity: { sub: 'alice', groups: ['eng'] },
  device: {
    id: 'alice-laptop',
    binding: 'dpop',
    enrolled: true,
    owner_match: true,
    stale: false,
    posture: { managed: true, disk_encrypted: false, os: 'Ubuntu', os_version: '22.04', trust: 'medium' },
  },
};

describe('ztgw policy validate', () => {
  it('the shipped examples are valid; each unchecked route name is one warning with its position', async () => {
    const r = await run('validate', EXAMPLES);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ok: 6 policies, 8 rules, set [0-9a-f]{12}\n$/);
    const warnings = r.err.trimEnd().split('\n');
    const codeRead = readFileSync(join(EXAMPLES, 'code-read.yaml'), 'utf8');
    expect(warnings).toContain(
      `warning: ${EXAMPLES}/code-read.yaml:${at(codeRead, 'code]')}: appliesTo.routes[0]: route "code" was not checked against the gateway config (pass --config FILE to check it)`,
    );
    // code-read, code-read-encrypted, demo-echo's two routes, payroll, and unmanaged-writes' two routes.
    expect(warnings).toHaveLength(7);
    for (const w of warnings) expect(w).toMatch(/^warning: \S+\.yaml:\d+:\d+: appliesTo\.routes\[\d\]: route "(code|payroll|echo|limited)" was not checked/);
  });

  it('with --config: route names are checked, no warnings; a route the config lacks is an error', async () => {
    const config = fixture({ 'gw.yaml': gatewayConfig(['code', 'payroll', 'echo', 'limited']) });
    expect(await run('validate', EXAMPLES, '--config', join(config, 'gw.yaml'))).toMatchObject({ code: 0, err: '' });

    const partial = fixture({ 'gw.yaml': gatewayConfig(['code', 'echo', 'limited']) });
    const r = await run('validate', '--config', join(partial, 'gw.yaml'), EXAMPLES);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    const payroll = readFileSync(join(EXAMPLES, 'payroll.yaml'), 'utf8');
    expect(r.err.trimEnd().split('\n')).toEqual([
      `${EXAMPLES}/payroll.yaml:${at(payroll, 'payroll]')}: appliesTo.routes[0]: unknown route "payroll" (routes: code, echo, limited)`,
      expect.stringMatching(new RegExp(`^${EXAMPLES}/unmanaged-writes\\.yaml:\\d+:\\d+: appliesTo\\.routes\\[1\\]: unknown route "payroll"`)),
    ]);
  });

  it('with --config: obligations name upstreams from its upstreams map; rate-limit tiers are none yet', async () => {
    const policy = (obligations: string) => `${POLICY}    obligations: ${obligations}\n`;
    const config = fixture({ 'gw.yaml': gatewayConfig(['code'], 'upstreams:\n  quarantine: http://127.0.0.1:9999\n') });
    const ok = fixture({ 'p.yaml': policy('{ upstream: quarantine }') });
    expect(await run('validate', ok, '--config', join(config, 'gw.yaml'))).toMatchObject({ code: 0, err: '' });

    const text = policy('{ upstream: quarantaine, rateLimitTier: gold }');
    const bad = fixture({ 'p.yaml': text });
    const r = await run('validate', bad, '--config', join(config, 'gw.yaml'));
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      `${bad}/p.yaml:${at(text, 'quarantaine')}: rules[0].obligations.upstream: unknown upstream "quarantaine" (known: quarantine)\n` +
        `${bad}/p.yaml:${at(text, 'gold')}: rules[0].obligations.rateLimitTier: unknown rate-limit tier "gold" (none are defined)\n`,
    );

    // Without a config the same names are warnings, not errors.
    const unchecked = await run('validate', bad);
    expect(unchecked.code).toBe(0);
    expect(unchecked.err).toBe(
      `warning: ${bad}/p.yaml:${at(text, 'quarantaine')}: rules[0].obligations.upstream: upstream "quarantaine" was not checked against the gateway config (pass --config FILE to check it)\n` +
        `warning: ${bad}/p.yaml:${at(text, 'gold')}: rules[0].obligations.rateLimitTier: rate-limit tier "gold" was not checked against the gateway config (pass --config FILE to check it)\n`,
    );
  });

  it('with --config and no DIR: the config’s policies.dir, relative to the config file', async () => {
    const dir = fixture({ 'gw.yaml': gatewayConfig(['code'], 'policies:\n  dir: ./access\n'), 'access/p.yaml': POLICY });
    const r = await run('validate', '--config', join(dir, 'gw.yaml'));
    expect(r).toMatchObject({ code: 0, out: expect.stringMatching(/^ok: 1 policies, 1 rules, set /), err: '' });
  });

  it('a broken policy: exit 2, every problem as file:line:col: field: message', async () => {
    const dir = examplesWith({
      'payroll.yaml': [['"hr" in identity.groups', '"hr" in identity.grops']],
      'demo-echo.yaml': [['    effect: allow', '    effect: allow\n    efect: deny']],
    });
    const r = await run('validate', dir);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    const payroll = readFileSync(join(dir, 'payroll.yaml'), 'utf8');
    const echo = readFileSync(join(dir, 'demo-echo.yaml'), 'utf8');
    expect(r.err.trimEnd().split('\n')).toEqual([
      `${dir}/demo-echo.yaml:${at(echo, 'efect')}: rules[0].efect: unknown field "efect" (known: name, description, effect, when, stepUp, obligations)`,
      `${dir}/payroll.yaml:${at(payroll, '|-')}: rules[0].when: CEL type error at 1:17 of the condition: no field "grops" in identity (fields: sub, issuer, groups, claims, amr, acr, auth_time)`,
    ]);
  });

  it('warns, with the position, about matches() over what the client sends; exit 0', async () => {
    const when = 'request.path.matches("^/api/v[0-9]+/") && request.headers.exists(h, h.matches("^x-debug"))';
    const dir = fixture({ 'regex.yaml': `${POLICY}  - name: versioned\n    effect: deny\n    when: '${when}'\n` });
    const r = await run('validate', dir);
    expect(r.code).toBe(0);
    const warnings = r.err.trimEnd().split('\n');
    expect(warnings).toEqual([
      expect.stringMatching(new RegExp(`^warning: ${dir}/regex\\.yaml:9:11: rules\\[1\\]\\.when: at 1:13 of the condition: matches\\(\\) on request\\.path, which the client controls: a string over 1024 characters is an error`)),
      expect.stringMatching(/at 1:70 of the condition: matches\(\) on "h" \(from request data\), which the client controls/),
    ]);
    // Over what the IdP signed, it is no concern of the client's.
    const quiet = fixture({ 'regex.yaml': `${POLICY}  - name: mail\n    effect: allow\n    when: 'identity.sub.matches("^[a-z]+@example\\\\.com$")'\n` });
    expect(await run('validate', quiet)).toMatchObject({ code: 0, err: '' });
  });

  it('a missing directory is exit 2', async () => {
    const r = await run('validate', join(tmp, 'nope'));
    expect(r).toMatchObject({ code: 2, err: `${join(tmp, 'nope')}:1:1: cannot read directory (ENOENT)\n` });
  });
});

describe('ztgw policy test', () => {
  it('the shipped tests pass against the shipped policies', async () => {
    const r = await run('test', EXAMPLES);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^\d+ passed, 0 failed\n$/);
    expect(Number(r.out.split(' ')[0])).toBeGreaterThanOrEqual(30);
  });

  it('the shipped tests catch a weakened policy', async () => {
    // Drop the owner check from payroll: an HR colleague's laptop would do.
    const dir = examplesWith({ 'payroll.yaml': [['\n      && has(device.owner_match) && device.owner_match', '']] });
    const r = await run('test', dir);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAIL \S+payroll\.yaml:\d+:\d+: HR on a colleague's enrolled laptop is denied: expected deny by default; got allow by payroll\/hr-on-own-device/);
    expect(r.out).toMatch(/\n\d+ passed, 1 failed\n$/);
  });

  it('a failing test: one line with what was expected and what came out, the summary, exit 1', async () => {
    const dir = fixture({
      'office.yaml': POLICY,
      'tests/office.yaml': `apiVersion: zt-gateway/v1
tests:
  - name: engineers get in
    input:
      request: ${JSON.stringify(REQUEST)}
      identity: { sub: alice, groups: [eng] }
    expect: { effect: allow, rule: office/eng }
  - name: sales get in too
    input:
      request: ${JSON.stringify(REQUEST)}
      identity: { sub: sam, groups: [sales] }
    expect: { effect: allow, rule: office/eng, reportOnly: [] }
`,
    });
    const r = await run('test', dir);
    expect(r).toEqual({
      code: 1,
      out: `FAIL ${dir}/tests/office.yaml:8:5: sales get in too: expected allow by office/eng, report-only none; got deny by default, report-only none\n1 passed, 1 failed\n`,
      err: '',
    });
  });

  it('test files are validated: unknown fields, bad inputs and rules that do not exist, with file:line:col', async () => {
    const text = `apiVersion: zt-gateway/v1
tests:
  - name: a
    input:
      request: { method: GET, host: h, path: /, ip: 10.0.0.1, time: "2024-06-03 08:30" }
      device: { enroled: true }
    expect: { effect: allow, rule: office/engineers }
  - name: b
    input: { request: { method: GET, host: h, path: /, ip: 10.0.0.1, time: "2024-06-03T08:30:00Z" } }
    expect: { effect: allow, rule: default, reportOnly: [office/eng], because: reasons }
`;
    const dir = fixture({ 'office.yaml': POLICY, 'tests/t.yaml': text });
    const r = await run('test', dir);
    const file = `${dir}/tests/t.yaml`;
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    // As for policies, a file that fails the schema is not read further.
    expect(r.err).toBe(`${file}:${at(text, 'because')}: tests[1].expect.because: unknown field "because" (known: effect, rule, reportOnly)\n`);

    const fixed = text.replace(', because: reasons', '');
    const dir2 = fixture({ 'office.yaml': POLICY, 'tests/t.yaml': fixed });
    const r2 = await run('test', dir2);
    const file2 = `${dir2}/tests/t.yaml`;
    expect(r2.code).toBe(2);
    expect(r2.err.trimEnd().split('\n')).toEqual([
      `${file2}:${at(fixed, '"2024-06-03 08:30"')}: tests[0].input.request.time: expected an RFC 3339 time with a zone such as "2024-06-03T08:30:00Z", got "2024-06-03 08:30"`,
      `${file2}:${at(fixed, 'enroled')}: tests[0].input.device.enroled: unknown field "enroled" (known: id, binding, enrolled, owner_match, posture, stale, fingerprint_changed)`,
      `${file2}:${at(fixed, 'office/engineers')}: tests[0].expect.rule: policy "office" has no rule "engineers" (rules: eng)`,
      `${file2}:${at(fixed, 'default')}: tests[1].expect.rule: "default" means the default deny, so the effect must be deny`,
      `${file2}:${at(fixed, 'office/eng]')}: tests[1].expect.reportOnly[0]: policy "office" is enforced, so it is never a report-only finding`,
    ]);
  });

  it('broken policies, or no tests at all, are exit 2', async () => {
    const broken = await run('test', fixture({ 'p.yaml': 'apiVersion: zt-gateway/v1\nname: x\n' }));
    expect(broken).toMatchObject({ code: 2, out: '', err: expect.stringMatching(/p\.yaml:1:1: rules: required field is missing/) });
    const dir = fixture({ 'office.yaml': POLICY });
    expect(await run('test', dir)).toMatchObject({ code: 2, err: `${dir}/tests:1:1: cannot read test directory (ENOENT)\n` });
  });
});

describe('ztgw policy explain', () => {
  it('every candidate rule with its outcome and position, the effect and why', async () => {
    const ctx = fixture({ 'ctx.json': JSON.stringify(CTX) });
    const r = await run('explain', '--input', join(ctx, 'ctx.json'), EXAMPLES);
    expect(r.code).toBe(0);
    const codeRead = readFileSync(join(EXAMPLES, 'code-read.yaml'), 'utf8');
    expect(r.out).toContain('request:  GET code.example.com/api/repos (route code) from 10.20.0.7 at 2024-06-03T08:30:00.000Z\n');
    expect(r.out).toContain(`code-read (enforce) ${EXAMPLES}/code-read.yaml\n`);
    expect(r.out).toMatch(new RegExp(`  matched      allow    engineers-working-hours +${EXAMPLES}/code-read\\.yaml:${at(codeRead, '|-')}\\n +"eng" in identity\\.groups\\n`));
    expect(r.out).toMatch(/  matched      deny     unencrypted-disk +\S+code-read-encrypted\.yaml:\d+:\d+\n/);
    expect(r.out).toMatch(/  not matched  deny     deny-elsewhere +\S+risk-flagged\.yaml/);
    expect(r.out).toContain('3 other policies do not apply to this request (appliesTo)\n');
    expect(r.out).toContain(
      '\neffect: allow\nwhy:    allowed: allow rule code-read/engineers-working-hours matched and no deny or step_up rule applies; report-only code-read-encrypted/unencrypted-disk would have made it deny\n',
    );
    expect(r.out).toContain('obligations: header x-access-grant: eng-working-hours\n');
  });

  it('a rule that errors: the error, and what an error means for its effect', async () => {
    const policies = fixture({
      'p.yaml': `${POLICY}  - name: risky\n    effect: deny\n    when: risk.score > 0.8\n`,
      'ctx.json': JSON.stringify({ request: REQUEST, identity: { sub: 'alice', groups: ['eng'] } }),
    });
    const r = await run('explain', policies, '--input', join(policies, 'ctx.json'));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/  error        deny     risky +\S+p\.yaml:9:11\n +! field not found: score \(an error in a deny rule counts as a match\)\n +risk\.score > 0\.8\n/);
    expect(r.out).toMatch(/\neffect: deny\nwhy: +denied: deny rule office\/risky applies \(office\/risky could not be evaluated/);
  });

  it('--json: the decision, the reason and every rule, for machines', async () => {
    const ctx = fixture({ 'ctx.json': JSON.stringify(CTX) });
    const r = await run('explain', '--json', '--input', join(ctx, 'ctx.json'), EXAMPLES);
    expect(r.code).toBe(0);
    const x = JSON.parse(r.out) as Record<string, unknown>;
    expect(x).toMatchObject({
      policySet: expect.stringMatching(/^[0-9a-f]{12}$/),
      effect: 'allow',
      rules: [{ policy: 'code-read', rule: 'engineers-working-hours', effect: 'allow' }],
      reportOnly: [{ policy: 'code-read-encrypted', rule: 'unencrypted-disk', effect: 'deny', wouldBe: 'deny' }],
      obligations: { headers: { 'x-access-grant': 'eng-working-hours' } },
      errors: [],
      reason: expect.stringMatching(/^allowed: /),
      input: inputToJson(inputFromJson(CTX)),
    });
    expect((x.policies as { policy: string }[]).map((p) => p.policy)).toEqual(['code-read-encrypted', 'code-read', 'risk-flagged']);
    expect((x.policies as { rules: { outcome: string }[] }[])[1]!.rules[0]!.outcome).toBe('matched');
  });

  it('accepts a whole decision log line as the input', async () => {
    const line = { level: 30, log: 'decision', reqId: 'r1', effect: 'deny', rules: [], policySet: 'abc', input: CTX };
    const ctx = fixture({ 'line.json': JSON.stringify(line) });
    const r = await run('explain', '--input', join(ctx, 'line.json'), EXAMPLES);
    expect(r.code).toBe(0);
    expect(r.out).toContain('\neffect: allow\n');
  });

  it('an input with a key named constructor, toString or __proto__ is exit 2, naming the key, never a stack trace', async () => {
    const line = { level: 30, log: 'decision', reqId: 'r1', effect: 'deny', rules: [], policySet: 'abc', input: CTX };
    const request = JSON.stringify(REQUEST);
    // JSON text, as a person or a log would write it: "__proto__" is then an own key.
    const cases: [string, string][] = [
      ['constructor', JSON.stringify(CTX).replace(request, request.replace('{', '{"constructor":"x",'))],
      ['toString', JSON.stringify({ ...CTX, marker: 1 }).replace('"marker"', '"toString"')],
      ['__proto__', JSON.stringify({ ...CTX, identity: { sub: 'alice', marker: { groups: ['admin'] } } }).replace('"marker"', '"__proto__"')],
      ['line', JSON.stringify({ ...line, marker: 1 }).replace('"marker"', '"constructor"')],
    ];
    const ctx = fixture(Object.fromEntries(cases.map(([name, text]) => [`${name}.json`, text])));
    const results = await Promise.all(cases.map(([name]) => run('explain', '--input', join(ctx, `${name}.json`), EXAMPLES)));
    const known = 'known: method, host, path, route, ip, headers, time';
    expect(results).toEqual([
      { code: 2, out: '', err: `${ctx}/constructor.json: request.constructor: unknown field "constructor" (${known})\n` },
      { code: 2, out: '', err: `${ctx}/toString.json: toString: unknown field "toString" (known: request, identity, device, risk)\n` },
      {
        code: 2,
        out: '',
        err: `${ctx}/__proto__.json: identity.__proto__: unknown field "__proto__" (known: sub, issuer, groups, claims, amr, acr, auth_time)\n`,
      },
      { code: 2, out: '', err: `${ctx}/line.json: constructor: "constructor" is not a field of a decision record or a log line\n` },
    ]);
  });

  it('claims are JSON as the token carried them: prototype names and "$typeName" are data, read as CEL reads them', async () => {
    const policies = fixture({
      'p.yaml': `${POLICY}  - name: claims-admin\n    effect: allow\n    when: 'identity.claims.role.value == true && identity.claims.__proto__.admin == true'\n`,
    });
    const claims = '{"role": {"$typeName": "google.protobuf.BoolValue", "value": true}, "__proto__": {"admin": true}}';
    const ctx = fixture({ 'ctx.json': `{"request": ${JSON.stringify(REQUEST)}, "identity": {"sub": "mallory", "claims": ${claims}}}` });
    const r = await run('explain', policies, '--input', join(ctx, 'ctx.json'), '--json');
    expect(r.code).toBe(0);
    const x = JSON.parse(r.out) as { effect: string; policies: { rules: { rule: string; outcome: string }[] }[] };
    // To @bufbuild/cel a "$typeName" object is a protobuf message: role is `true`, so role.value is an error, which never grants.
    expect(x.policies[0]!.rules.find((rule) => rule.rule === 'claims-admin')).toMatchObject({ outcome: 'error' });
    expect(x.effect).toBe('deny');
  });

  it('an input that is not a PolicyInput is exit 2, naming the field', async () => {
    const ctx = fixture({ 'ctx.json': JSON.stringify({ ...CTX, request: { ...REQUEST, time: 'Monday' } }), 'bad.json': '{' });
    const r = await run('explain', '--input', join(ctx, 'ctx.json'), EXAMPLES);
    expect(r).toMatchObject({ code: 2, out: '', err: expect.stringContaining(`${ctx}/ctx.json: request.time: expected an RFC 3339 time`) });
    const r2 = await run('explain', '--input', join(ctx, 'bad.json'), EXAMPLES);
    expect(r2).toMatchObject({ code: 2, err: expect.stringMatching(/bad\.json: cannot read the input \(.*JSON/) });
    const r3 = await run('explain', '--input', join(ctx, 'none.json'), EXAMPLES);
    expect(r3).toMatchObject({ code: 2, err: `${ctx}/none.json: cannot read the input (ENOENT)\n` });
  });
});

describe('ztgw policy replay', () => {
  // The decisions the shipped examples made, as the gateway would have logged them.
  function decisions(): string {
    const loaded = loadPolicyDir(EXAMPLES, undefined);
    if (!loaded.ok) throw new Error('the examples do not load');
    const evaluator = createEvaluator(loaded.set);
    const hannah = { sub: 'hannah', groups: ['hr'] };
    const colleaguesLaptop = { ...CTX.device, id: 'harry-laptop', owner_match: false };
    const payroll = { ...REQUEST, host: 'payroll.example.com', path: '/api/payslips', route: 'payroll' };
    const echoPost = { ...REQUEST, method: 'POST', host: '127.0.0.1', path: '/echo/x', route: 'echo' };
    const cases: [string, unknown][] = [
      ['r-unencrypted', CTX],
      ['r-colleague', { request: payroll, identity: hannah, device: colleaguesLaptop }],
      ['r-echo-post', { request: echoPost, identity: { sub: 'bob' } }],
      ['r-own', { request: payroll, identity: hannah, device: { ...CTX.device, id: 'hannah-laptop' } }],
    ];
    const lines = cases.map(([reqId, json]) => {
      const input = inputFromJson(json);
      const record = decisionRecord(reqId, evaluator.evaluate(input), input, loaded.set.hash);
      // As pino writes it: its own fields around the record.
      return JSON.stringify({ level: 30, time: 1717403400000, pid: 7, hostname: 'gw-1', ...record, msg: 'policy decision' });
    });
    // An access log line, a text line and a blank line are skipped; a damaged record is reported.
    lines.splice(1, 0, JSON.stringify({ level: 30, reqId: 'r-unencrypted', msg: 'request completed', res: { statusCode: 200 } }), 'gateway started', '');
    lines.push(JSON.stringify({ log: 'decision', reqId: 'r-bad', effect: 'allow', rules: [], policySet: 'x', input: { request: { ...REQUEST, time: 'noon' } } }));
    return `${lines.join('\n')}\n`;
  }

  // The candidate: the trial policy enforced, payroll without the owner check, and a
  // step-up for writes to the demo route.
  const candidate = () =>
    examplesWith({
      'code-read-encrypted.yaml': [['mode: report-only', 'mode: enforce']],
      'payroll.yaml': [['\n      && has(device.owner_match) && device.owner_match', '']],
      'demo-echo.yaml': [['    when: has(identity.sub)\n', '    when: has(identity.sub)\n  - name: writes-step-up\n    effect: step_up\n    when: request.method == "POST"\n    stepUp: { acrValues: [phr] }\n']],
    });

  it('lists every flip: allow → deny and deny → allow apart, other flips in a third group', async () => {
    const dir = fixture({ 'decisions.jsonl': decisions() });
    const log = join(dir, 'decisions.jsonl');
    const policies = candidate();
    const r = await run('replay', '--log', log, '--policies', policies);
    // The damaged record on line 8 is reported and skipped; the others are compared, and exit 2 says one was left out.
    expect(r.code).toBe(2);
    expect(r.err).toContain(`${log}:8: input.request.time: expected an RFC 3339 time`);
    const lines = r.out.split('\n');
    expect(lines.slice(0, 4)).toEqual([
      expect.stringMatching(new RegExp(`^replayed ${log} against ${policies} \\(set [0-9a-f]{12}\\)$`)),
      '  decision records: 4, skipped lines: 2, invalid records: 1',
      '  unchanged: 1',
      '  flipped: 3 (allow → deny 1, deny → allow 1, other 1)',
    ]);
    expect(r.out).toMatch(
      /\nallow → deny \(1\)\n  r-unencrypted  sub alice  route code  \(line 1\)\n    was allow by code-read\/engineers-working-hours \(set [0-9a-f]{12}\)\n    now deny by code-read-encrypted\/unencrypted-disk\n/,
    );
    expect(r.out).toMatch(
      /\ndeny → allow \(1\)\n  r-colleague  sub hannah  route payroll  \(line 5\)\n    was deny by default \(set [0-9a-f]{12}\)\n    now allow by payroll\/hr-on-own-device\n/,
    );
    expect(r.out).toMatch(/\nother flips \(1\)\n  r-echo-post  sub bob  route echo  \(line 6\)\n    was allow by demo-echo\/any-authenticated-user .*\n    now step_up by demo-echo\/writes-step-up\n/);
  });

  it('--json', async () => {
    const dir = fixture({ 'decisions.jsonl': decisions() });
    const r = await run('replay', '--json', '--log', join(dir, 'decisions.jsonl'), '--policies', candidate());
    expect(r.code).toBe(2);
    const report = JSON.parse(r.out) as Record<string, unknown>;
    expect(report).toMatchObject({
      records: 4,
      skipped: 2,
      invalid: [{ line: 8, message: expect.stringMatching(/^input\.request\.time: /) }],
      unchanged: 1,
      flips: {
        allowToDeny: [{ reqId: 'r-unencrypted', sub: 'alice', route: 'code', was: { effect: 'allow' }, now: { effect: 'deny' } }],
        denyToAllow: [{ reqId: 'r-colleague', was: { effect: 'deny', rules: [] }, now: { effect: 'allow', rules: [{ policy: 'payroll', rule: 'hr-on-own-device' }] } }],
        other: [{ reqId: 'r-echo-post', was: { effect: 'allow' }, now: { effect: 'step_up' } }],
      },
    });
  });

  it('against the set that made the decisions, nothing flips', async () => {
    const dir = fixture({ 'decisions.jsonl': decisions() });
    const r = await run('replay', '--log', join(dir, 'decisions.jsonl'), '--policies', EXAMPLES);
    expect(r.out).toContain('  unchanged: 4\n  flipped: 0 (allow → deny 0, deny → allow 0, other 0)\n');
  });

  it('a log of readable records only is exit 0', async () => {
    const dir = fixture({ 'decisions.jsonl': decisions().split('\n').slice(0, -2).join('\n') });
    const r = await run('replay', '--log', join(dir, 'decisions.jsonl'), '--policies', EXAMPLES);
    expect(r).toMatchObject({ code: 0, out: expect.stringContaining('invalid records: 0\n') });
  });

  // A policy repository's CI gates on replay: a change that would let in what was refused
  // (deny → allow, or step_up → allow) fails the build; taking access away does not.
  describe('exit 1 when a decision would now allow what was denied or stepped up', () => {
    const readable = () => fixture({ 'decisions.jsonl': decisions().split('\n').slice(0, -2).join('\n') });
    it('deny → allow: exit 1, and the report says so', async () => {
      const policies = examplesWith({ 'payroll.yaml': [['\n      && has(device.owner_match) && device.owner_match', '']] });
      const r = await run('replay', '--log', join(readable(), 'decisions.jsonl'), '--policies', policies);
      expect(r.code).toBe(1);
      expect(r.out).toContain('  flipped: 1 (allow → deny 0, deny → allow 1, other 0)\n  now allowed that were not: 1 (exit 1)\n');
      expect(r.err.split('\n').filter((l) => l !== '' && !l.startsWith('warning: '))).toEqual([]); // only unchecked-name warnings
    });

    it('step_up → allow: exit 1', async () => {
      const stepUp = { 'demo-echo.yaml': [['    when: has(identity.sub)\n', '    when: has(identity.sub)\n  - name: writes-step-up\n    effect: step_up\n    when: request.method == "POST"\n    stepUp: { acrValues: [phr] }\n']] as [string, string][] };
      // Decisions made under the step-up rule, replayed against the examples without it.
      const loaded = loadPolicyDir(examplesWith(stepUp), undefined);
      if (!loaded.ok) throw new Error('the candidate does not load');
      const input = inputFromJson({ request: { ...REQUEST, method: 'POST', host: '127.0.0.1', path: '/echo/x', route: 'echo' }, identity: { sub: 'bob' } });
      const decision = createEvaluator(loaded.set).evaluate(input);
      expect(decision.effect).toBe('step_up');
      const dir = fixture({ 'decisions.jsonl': `${JSON.stringify(decisionRecord('r-1', decision, input, loaded.set.hash))}\n` });
      const r = await run('replay', '--json', '--log', join(dir, 'decisions.jsonl'), '--policies', EXAMPLES);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.out).flips.other).toMatchObject([{ was: { effect: 'step_up' }, now: { effect: 'allow' } }]);
    });

    it('allow → deny only: exit 0', async () => {
      const policies = examplesWith({ 'code-read-encrypted.yaml': [['mode: report-only', 'mode: enforce']] });
      const r = await run('replay', '--log', join(readable(), 'decisions.jsonl'), '--policies', policies);
      expect(r.out).toContain('  flipped: 1 (allow → deny 1, deny → allow 0, other 0)\n');
      expect(r.out).not.toContain('now allowed that were not');
      expect(r.code).toBe(0);
    });

    it('an invalid record is exit 2 even with a widening (bad input first)', async () => {
      const policies = examplesWith({ 'payroll.yaml': [['\n      && has(device.owner_match) && device.owner_match', '']] });
      const dir = fixture({ 'decisions.jsonl': decisions() });
      const r = await run('replay', '--log', join(dir, 'decisions.jsonl'), '--policies', policies);
      expect(r.out).toContain('now allowed that were not: 1');
      expect(r.code).toBe(2);
    });
  });

  // Keys that name members of Object.prototype once reached a table lookup as fields and
  // crashed the tool with a stack trace (exit 1), losing the report on every other record.
  it('a record with a key named constructor, toString or __proto__ is reported with its line and skipped, exit 2', async () => {
    const good = decisions().split('\n')[0]!;
    const record = JSON.parse(good) as { input: { request: Record<string, unknown> } };
    const withKey = (at: 'record' | 'request', key: string) => {
      // Written as JSON text: JSON.parse makes "__proto__" an own key, as in a log file.
      const text = JSON.stringify({ ...record, marker: 1 });
      return at === 'record'
        ? text.replace('"marker":1', `${JSON.stringify(key)}:1`)
        : text.replace('"method":', `${JSON.stringify(key)}:"x","method":`).replace(',"marker":1', '');
    };
    const lines = [
      good,
      withKey('record', 'constructor'),
      withKey('record', 'toString'),
      withKey('record', '__proto__'),
      withKey('request', 'constructor'),
      withKey('request', 'toString'),
      withKey('request', '__proto__'),
      good,
    ];
    const dir = fixture({ 'decisions.jsonl': `${lines.join('\n')}\n` });
    const log = join(dir, 'decisions.jsonl');
    const r = await run('replay', '--log', log, '--policies', EXAMPLES);
    expect(r.code).toBe(2);
    expect(r.err.split('\n').filter((l) => l.startsWith(log))).toEqual([
      `${log}:2: constructor: "constructor" is not a field of a decision record or a log line`,
      `${log}:3: toString: "toString" is not a field of a decision record or a log line`,
      `${log}:4: __proto__: "__proto__" is not a field of a decision record or a log line`,
      `${log}:5: input.request.constructor: unknown field "constructor" (known: method, host, path, route, ip, headers, time)`,
      `${log}:6: input.request.toString: unknown field "toString" (known: method, host, path, route, ip, headers, time)`,
      `${log}:7: input.request.__proto__: unknown field "__proto__" (known: method, host, path, route, ip, headers, time)`,
    ]);
    expect(r.err).not.toMatch(/\bat \S+:\d+:\d+\)?$/m); // no stack trace
    expect(r.out).toContain('  decision records: 2, skipped lines: 0, invalid records: 6\n  unchanged: 2\n');
  });

  it('a candidate set that does not load, or a log that cannot be read, is exit 2', async () => {
    const dir = fixture({ 'decisions.jsonl': decisions() });
    const broken = examplesWith({ 'payroll.yaml': [['effect: allow', 'effect: permit']] });
    const r = await run('replay', '--log', join(dir, 'decisions.jsonl'), '--policies', broken);
    expect(r).toMatchObject({ code: 2, out: '', err: expect.stringMatching(/payroll\.yaml:\d+:\d+: rules\[0\]\.effect: must be one of/) });
    const r2 = await run('replay', '--log', join(dir, 'missing.jsonl'), '--policies', EXAMPLES);
    expect(r2).toMatchObject({ code: 2, out: '', err: `${join(dir, 'missing.jsonl')}: cannot read the log (ENOENT)\n` });
  });
});

describe('usage', () => {
  it('no command, an unknown command, a missing or unknown option: exit 2 with the usage', async () => {
    expect(await run()).toMatchObject({ code: 2, out: '', err: expect.stringContaining('usage: ztgw policy') });
    expect(await run('lint')).toMatchObject({ code: 2, err: expect.stringContaining('ztgw policy: unknown policy command "lint"') });
    expect(await run('explain', EXAMPLES)).toMatchObject({ code: 2, err: expect.stringContaining('explain: --input FILE is required') });
    expect(await run('replay')).toMatchObject({ code: 2, err: expect.stringContaining('replay: --log FILE is required') });
    expect(await run('validate', '--strict')).toMatchObject({ code: 2, err: expect.stringContaining("Unknown option '--strict'") });
    expect(await run('validate', 'a', 'b')).toMatchObject({ code: 2, err: expect.stringContaining('validate: one policy directory at most') });
  });

  it('help is exit 0 on stdout', async () => {
    expect(await run('help')).toMatchObject({ code: 0, out: expect.stringContaining('replay --log FILE'), err: '' });
  });
});

describe('policies/README.md', () => {
  const readme = readFileSync(join(EXAMPLES, 'README.md'), 'utf8');

  // The reference part of the README is copied from cel.ts; this fails when they drift.
  it('documents every context field with its description from cel.ts', () => {
    function* fields(t: CelT, path: string): Generator<[string, string]> {
      if (t.kind !== 'object') return;
      for (const [name, f] of Object.entries(t.fields)) {
        yield [`${path}.${name}`, f.doc];
        yield* fields(f.type, `${path}.${name}`);
      }
    }
    const missing: string[] = [];
    for (const [name, type] of Object.entries(POLICY_CONTEXT)) {
      for (const [path, doc] of fields(type, name)) {
        const row = readme.split('\n').find((l) => l.startsWith(`| \`${path}\` |`));
        if (row === undefined || !row.endsWith(`| ${doc} |`)) missing.push(path);
      }
    }
    expect(missing).toEqual([]);
  });

  it('documents every helper function as cel.ts does', () => {
    for (const doc of HELPER_DOCS) expect(readme).toContain(`- ${doc}\n`);
  });
});
