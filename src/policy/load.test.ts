import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { formatIssue, type ConfigIssue } from '../core/diagnostics.ts';
import { compilePolicyFiles, loadPolicyDir, loadPolicyDirAsync, type KnownNames, type PolicyFile, type PolicyFileCache } from './load.ts';
import type { PolicySet } from './set.ts';

const KNOWN: KnownNames = { tiers: new Set(['standard', 'strict']), upstreams: new Set(['quarantine']), routes: new Set(['code', 'payroll']) };

const CODE = `apiVersion: zt-gateway/v1
name: code-access
appliesTo:
  routes: [code]
rules:
  - name: engineers
    effect: allow
    when: '"eng" in identity.groups'
    obligations:
      rateLimitTier: standard
      headers: { x-team: eng }
  - name: flagged
    effect: step_up
    when: has(risk.flagged) && risk.flagged
    stepUp: { acrValues: [phr], maxAgeS: 300 }
`;

function ok(...files: PolicyFile[]): PolicySet {
  const result = compilePolicyFiles(files, KNOWN);
  if (!result.ok) throw new Error(result.issues.map(formatIssue).join('\n'));
  return result.set;
}

/** The issues, formatted as file:line:col: field: message; fails if the set loads. */
function rejected(text: string, file = 'p.yaml', others: PolicyFile[] = []): string[] {
  const result = compilePolicyFiles([...others, { file, text }], KNOWN);
  if (result.ok) throw new Error('expected the policies to be rejected');
  return result.issues.map(formatIssue);
}

/** Replace one exact snippet; throws if it is absent so a stale edit cannot pass silently. */
function edit(text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`"${from}" not in text`);
  return text.replace(from, () => to);
}

/** "line:col" of the nth occurrence of `needle`. */
function at(text: string, needle: string, nth = 1): string {
  let index = -1;
  for (let i = 0; i < nth; i++) index = text.indexOf(needle, index + 1);
  if (index < 0) throw new Error(`"${needle}" not in text`);
  const before = text.slice(0, index);
  return `${before.split('\n').length}:${index - before.lastIndexOf('\n')}`;
}

describe('compilePolicyFiles: a valid set', () => {
  it('compiles policies with defaults, frozen, in file-name order', () => {
    const other = edit(edit(CODE, 'name: code-access', 'name: a-first'), 'routes: [code]', 'routes: [payroll]');
    const set = ok({ file: 'z.yaml', text: CODE }, { file: 'a.yaml', text: other });
    expect(set.policies.map((p) => [p.name, p.file, p.mode, p.order])).toEqual([
      ['a-first', 'a.yaml', 'enforce', 0],
      ['code-access', 'z.yaml', 'enforce', 1],
    ]);
    expect(Object.isFrozen(set.policies[0])).toBe(true);
    expect(set.policies[1]!.rules[0]).toMatchObject({ name: 'engineers', effect: 'allow', line: 8, col: 11 });
  });

  it('hashes names and contents: order-independent, 12 hex characters', () => {
    const a = { file: 'a.yaml', text: CODE };
    const b = { file: 'b.yaml', text: edit(edit(CODE, 'name: code-access', 'name: other'), 'routes: [code]', 'routes: [payroll]') };
    const hash = ok(a, b).hash;
    expect(hash).toMatch(/^[0-9a-f]{12}$/);
    expect(ok(b, a).hash).toBe(hash);
    expect(ok({ ...a, file: 'dir/a.yaml' }, b).hash).toBe(hash);
    expect(ok({ ...a, file: 'c.yaml' }, b).hash).not.toBe(hash);
    expect(ok({ ...a, text: `${CODE}\n` }, b).hash).not.toBe(hash);
  });
});

describe('compilePolicyFiles: every problem, with file:line:col', () => {
  it('a YAML syntax error', () => {
    const text = edit(CODE, "    when: '\"eng\" in identity.groups'", '    when: [unclosed');
    expect(rejected(text)).toEqual([expect.stringMatching(/^p\.yaml:9:\d+: /)]);
  });

  it('a second document in the same file (it would otherwise be ignored)', () => {
    expect(rejected(`${CODE}---\n${CODE}`)).toEqual(['p.yaml:16:1: one policy per file: move the document after "---" to a file of its own']);
  });

  it('an empty file', () => {
    expect(rejected('')).toEqual(['p.yaml:1:1: expected object, got null']);
  });

  it('a duplicated key (the later value would silently win)', () => {
    const text = edit(CODE, '    effect: allow', '    effect: allow\n    effect: deny');
    expect(rejected(text)).toEqual([`p.yaml:${at(text, 'effect: deny')}: Map keys must be unique`]);
  });

  it('an unknown field, at its key, naming the known ones', () => {
    const text = edit(CODE, '    effect: allow', '    efect: allow');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, 'name: engineers')}: rules[0].effect: required field is missing`,
      `p.yaml:${at(text, 'efect')}: rules[0].efect: unknown field "efect" (known: name, description, effect, when, stepUp, obligations)`,
    ]);
  });

  it('a wrong apiVersion, a bad effect, an upper-case header name', () => {
    const text = edit(edit(edit(CODE, 'zt-gateway/v1', 'zt-gateway/v2'), 'effect: allow', 'effect: permit'), 'x-team: eng', 'X-Team: eng');
    expect(rejected(text)).toEqual([
      `p.yaml:1:13: apiVersion: must be "zt-gateway/v1"`,
      `p.yaml:${at(text, 'permit')}: rules[0].effect: must be one of: "allow", "deny", "step_up"`,
      `p.yaml:${at(text, 'X-Team')}: rules[0].obligations.headers["X-Team"]: "X-Team" is not a valid name here (must match ^[a-z0-9-]+$)`,
    ]);
  });

  it('a CEL syntax error, at the when scalar, with the CEL position', () => {
    const text = edit(CODE, `'"eng" in identity.groups'`, `'"eng" in identity.groups &&'`);
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, `'"eng"`)}: rules[0].when: CEL syntax error at 1:26 of the condition: found & but expecting end of input`,
    ]);
  });

  it('a CEL type error: a list compared with an int', () => {
    const text = edit(CODE, `'"eng" in identity.groups'`, 'identity.groups == 3');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, 'identity.groups == 3')}: rules[0].when: CEL type error at 1:17 of the condition: no matching overload for "==" applied to (list<string>, int)`,
    ]);
  });

  it('a CEL type error: an unknown variable, in a block scalar', () => {
    const text = edit(CODE, `    when: '"eng" in identity.groups'`, '    when: |\n      "eng" in identity.groups &&\n      usr.admin');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, '|')}: rules[0].when: CEL type error at 2:1 of the condition: undeclared reference to "usr" (variables: request, identity, device, risk)`,
    ]);
  });

  it('duplicate rule names within a policy', () => {
    const text = edit(CODE, '- name: flagged', '- name: engineers');
    expect(rejected(text)).toEqual([`p.yaml:${at(text, 'engineers', 2)}: rules[1].name: duplicate rule name "engineers" (first used by rules[0])`]);
  });

  it('duplicate policy names across files, pointing at the second', () => {
    const second = edit(CODE, 'routes: [code]', 'routes: [payroll]');
    expect(rejected(second, 'b.yaml', [{ file: 'a.yaml', text: CODE }])).toEqual([
      `b.yaml:2:7: name: duplicate policy name "code-access" (first defined in a.yaml)`,
    ]);
  });

  it('an unknown rate-limit tier and an unknown upstream', () => {
    const text = edit(CODE, 'rateLimitTier: standard', 'rateLimitTier: gold\n      upstream: quarantaine');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, 'gold')}: rules[0].obligations.rateLimitTier: unknown rate-limit tier "gold" (known: standard, strict)`,
      `p.yaml:${at(text, 'quarantaine')}: rules[0].obligations.upstream: unknown upstream "quarantaine" (known: quarantine)`,
    ]);
  });

  it('an unknown route, when the routes are known', () => {
    const text = edit(CODE, 'routes: [code]', 'routes: [code, payrol]');
    expect(rejected(text)).toEqual([`p.yaml:${at(text, 'payrol')}: appliesTo.routes[1]: unknown route "payrol" (routes: code, payroll)`]);
  });

  it('step_up without stepUp, stepUp on an allow, obligations on a deny', () => {
    const text = edit(
      edit(CODE, '    stepUp: { acrValues: [phr], maxAgeS: 300 }\n', ''),
      '    when: \'"eng" in identity.groups\'',
      "    when: '\"eng\" in identity.groups'\n    stepUp: { acrValues: [phr] }",
    ).replace('effect: allow', 'effect: deny');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, 'stepUp')}: rules[0].stepUp: stepUp only applies to step_up rules (this one is deny)`,
      `p.yaml:${at(text, 'obligations')}: rules[0].obligations: obligations only apply to allow rules (this one is deny)`,
      `p.yaml:${at(text, 'step_up')}: rules[1].effect: a step_up rule needs stepUp.acrValues: what the client must re-authenticate with`,
    ]);
  });

  it('headers the gateway owns cannot be obligations', () => {
    const text = edit(CODE, 'x-team: eng', 'x-zt-assertion: forged, transfer-encoding: chunked');
    expect(rejected(text)).toEqual([
      `p.yaml:${at(text, 'x-zt-assertion')}: rules[0].obligations.headers["x-zt-assertion"]: "x-zt-assertion" is set by the gateway or the client and cannot be an obligation`,
      `p.yaml:${at(text, 'transfer-encoding')}: rules[0].obligations.headers["transfer-encoding"]: "transfer-encoding" is set by the gateway or the client and cannot be an obligation`,
    ]);
  });

  it('never returns part of a set: one bad file fails all, every file reported', () => {
    const good = { file: 'a.yaml', text: CODE };
    const bad1 = edit(edit(CODE, 'name: code-access', 'name: b'), 'identity.groups', 'identity.grops');
    const bad2 = edit(CODE, 'name: code-access', 'name: c').replace('standard', 'gold');
    const result = compilePolicyFiles([good, { file: 'b.yaml', text: bad1 }, { file: 'c.yaml', text: bad2 }], KNOWN);
    expect(result.ok).toBe(false);
    expect('set' in result).toBe(false);
    if (!result.ok) expect(result.issues.map((i: ConfigIssue) => i.file)).toEqual(['b.yaml', 'c.yaml']);
  });
});

describe('compilePolicyFiles: keys and conditions that name JavaScript built-ins', () => {
  it('as YAML keys at any level they are unknown fields, at the key', () => {
    for (const key of ['constructor', '__proto__', 'toString']) {
      expect(rejected(edit(CODE, 'appliesTo:', `${key}: x\nappliesTo:`))).toEqual([`p.yaml:3:1: ${key}: unknown field "${key}" (known: $schema, apiVersion, kind, name, description, appliesTo, mode, rules)`]);
      expect(rejected(edit(CODE, '  routes: [code]', `  routes: [code]\n  ${key}: [x]`))[0]).toMatch(new RegExp(`^p\\.yaml:5:3: appliesTo\\.${key.replace('$', '\\$')}: unknown field`));
      expect(rejected(edit(CODE, '    effect: allow', `    effect: allow\n    ${key}: x`))[0]).toMatch(/^p\.yaml:8:5: rules\[0\]\./);
    }
  });

  it('a condition reading one is a CEL type error at its rule, never an exception', () => {
    expect(rejected(edit(CODE, `'"eng" in identity.groups'`, `'request.constructor == "x"'`))).toEqual([
      `p.yaml:${at(CODE, `'"eng"`)}: rules[0].when: CEL type error at 1:8 of the condition: no field "constructor" in request (fields: method, host, path, route, ip, headers, time)`,
    ]);
  });

  it('an obligation header named "constructor" is a header (the schema allows the name)', () => {
    const set = ok({ file: 'p.yaml', text: edit(CODE, 'headers: { x-team: eng }', 'headers: { constructor: x }') });
    expect(set.policies[0]!.rules[0]!.obligations?.headers).toEqual({ constructor: 'x' });
  });
});

describe('loadPolicyDir', () => {
  const dir = () => mkdtempSync(join(tmpdir(), 'zt-policies-'));

  it('reads *.yaml and *.yml directly in the directory, not tests/ or dotfiles', () => {
    const d = dir();
    writeFileSync(join(d, 'code.yaml'), CODE);
    writeFileSync(join(d, 'payroll.yml'), edit(edit(CODE, 'name: code-access', 'name: payroll'), 'routes: [code]', 'routes: [payroll]'));
    writeFileSync(join(d, '.code.yaml.swp'), 'garbage: [');
    writeFileSync(join(d, 'README.md'), '# not a policy');
    mkdirSync(join(d, 'tests'));
    writeFileSync(join(d, 'tests', 'code.yaml'), 'not: a policy');
    const result = loadPolicyDir(d, KNOWN);
    expect(result.ok && result.set.policies.map((p) => p.name)).toEqual(['code-access', 'payroll']);
    expect(result.ok && result.set.files).toEqual([join(d, 'code.yaml'), join(d, 'payroll.yml')]);
  });

  it('reports errors with the file path', () => {
    const d = dir();
    writeFileSync(join(d, 'code.yaml'), edit(CODE, 'identity.groups', 'identity.groups.size()'));
    const result = loadPolicyDir(d, KNOWN);
    expect(!result.ok && result.issues.map(formatIssue)).toEqual([
      `${join(d, 'code.yaml')}:8:11: rules[0].when: CEL type error at 1:6 of the condition: no matching overload for "in" applied to (string, int)`,
    ]);
  });

  it('an empty or missing directory is an error, not a silent deny-all', () => {
    expect(loadPolicyDir(dir(), KNOWN)).toMatchObject({ ok: false, issues: [{ line: 1, col: 1, message: 'no policy files (*.yaml) in the directory' }] });
    expect(loadPolicyDir(join(dir(), 'nope'), KNOWN)).toMatchObject({ ok: false, issues: [{ message: 'cannot read directory (ENOENT)' }] });
  });

  it('the async load gives the event loop back while a large set compiles, and loads what the sync one does', async () => {
    const d = dir();
    // 300 files compiled from scratch: far more than one slice of work on any machine.
    for (let n = 0; n < 300; n++) {
      writeFileSync(join(d, `p-${n}.yaml`), `apiVersion: zt-gateway/v1\nname: p-${n}\nrules:\n  - name: r\n    effect: allow\n    when: '"team-${n}" in identity.groups && request.method in ["GET"]'\n`);
    }
    let turns = 0;
    let counting = true;
    const count = (): void => {
      if (!counting) return;
      turns++;
      setImmediate(count);
    };
    setImmediate(count);
    const loaded = await loadPolicyDirAsync(d, KNOWN);
    counting = false;
    expect(turns).toBeGreaterThan(0); // a synchronous load would hold the loop to the end
    const sync = loadPolicyDir(d, KNOWN);
    if (!loaded.ok || !sync.ok) throw new Error('expected both to load');
    expect(loaded.set.hash).toBe(sync.set.hash);
    expect(loaded.set.policies.map((p) => p.name)).toEqual(sync.set.policies.map((p) => p.name));
    expect(await loadPolicyDirAsync(join(d, 'nope'), KNOWN)).toMatchObject({ ok: false, issues: [{ message: 'cannot read directory (ENOENT)' }] });
  });
});

describe('incremental compile (a file cache handed from set to set)', () => {
  const other = (n: number, when = '"eng" in identity.groups') =>
    ({ file: `/p/other-${n}.yaml`, text: `apiVersion: zt-gateway/v1\nname: other-${n}\nrules:\n  - name: r\n    effect: allow\n    when: '${when}'\n` });

  it('reuses the files whose text did not change, recompiles the edited one, and drops removed ones', () => {
    const cache: PolicyFileCache = new Map();
    const first = compilePolicyFiles([{ file: '/p/code.yaml', text: CODE }, other(1), other(2)], KNOWN, cache);
    const edited = compilePolicyFiles([{ file: '/p/code.yaml', text: CODE }, other(1, '"sre" in identity.groups')], KNOWN, cache);
    if (!first.ok || !edited.ok) throw new Error('expected both to compile');
    expect(edited.set.policies[0]!.rules[0]).toBe(first.set.policies[0]!.rules[0]); // code.yaml: not recompiled
    expect(edited.set.policies[1]!.rules[0]).not.toBe(first.set.policies[1]!.rules[0]); // the edit is
    expect(edited.set.policies[1]!.rules[0]!.condition).not.toBe(first.set.policies[1]!.rules[0]!.condition);
    expect(edited.set.policies.map((p) => p.order)).toEqual([0, 1]);
    expect([...cache.keys()].map((k) => k.split('\u0000')[0])).toEqual(['/p/code.yaml', '/p/other-1.yaml']);
  });

  it('checks cached files again against other names: a dropped upstream or route is still refused', () => {
    const cache: PolicyFileCache = new Map();
    expect(compilePolicyFiles([{ file: '/p/code.yaml', text: CODE }], KNOWN, cache).ok).toBe(true);
    const fewer = compilePolicyFiles([{ file: '/p/code.yaml', text: CODE }], { ...KNOWN, routes: new Set(['payroll']) }, cache);
    expect(fewer.ok).toBe(false);
    expect(!fewer.ok && fewer.issues.map(formatIssue).join('\n')).toMatch(/unknown route "code"/);
  });

  it('finds a duplicate policy name between a cached file and a new one', () => {
    const cache: PolicyFileCache = new Map();
    expect(compilePolicyFiles([other(1)], KNOWN, cache).ok).toBe(true);
    const twice = compilePolicyFiles([other(1), { ...other(1), file: '/p/copy.yaml' }], KNOWN, cache);
    expect(!twice.ok && twice.issues.map(formatIssue).join('\n')).toMatch(/duplicate policy name "other-1"/);
  });
});
