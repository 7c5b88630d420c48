// `ztgw model score|eval` as an operator runs them: real processes, exit codes, files.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { generate } from '../../models/train/generate.ts';
import { loadRiskModel, type RiskModel } from '../../src/risk/model.ts';
import { scoreTrace } from '../../src/risk/trace.ts';

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');
const MODEL = resolve(import.meta.dirname, '../../models/anomaly.onnx');
const META = resolve(import.meta.dirname, '../../models/anomaly.meta.json');
const dir = mkdtempSync(join(tmpdir(), 'ztgw-model-cli-'));

function ztgw(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((ok) => child.once('close', (status) => ok({ status, stdout, stderr })));
}

const jsonl = (lines: readonly object[]): string => lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
const readJsonl = (file: string): Record<string, unknown>[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));

// A small trace: 20 people, one flood and one enumeration episode, over one day.
const trace = generate({ seed: 11, days: 1, users: 20, serviceAccounts: 2, episodes: 1, families: ['flood', 'enumeration'] });
let model: RiskModel;

beforeAll(async () => {
  model = await loadRiskModel({ modelPath: MODEL, metaPath: META });
});
afterAll(async () => {
  await model?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('ztgw model score', () => {
  it('writes one {ts, principal, score} line per input line, in input order, replayed in event-time order', async () => {
    // Shuffled input: the scores must be those of the time-ordered replay, written back in input order.
    const shuffled = trace.slice(0, 3000).map((l, i) => ({ l, k: (i * 7919) % 3001 }));
    shuffled.sort((a, b) => a.k - b.k);
    const input = shuffled.map((s) => ({ ...s.l, extra: 'ignored' }));
    writeFileSync(join(dir, 'in.jsonl'), jsonl(input));
    const r = await ztgw(['model', 'score', '--traces', join(dir, 'in.jsonl'), '--out', join(dir, 'out.jsonl')]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = readJsonl(join(dir, 'out.jsonl'));
    expect(out).toHaveLength(input.length);
    const sorted = [...input].sort((a, b) => a.ts - b.ts);
    const expected = await scoreTrace(model, sorted);
    const byKey = new Map(sorted.map((l, i) => [`${l.ts}|${l.principal}|${l.path}`, expected[i]!]));
    out.forEach((o, i) => {
      expect(Object.keys(o)).toEqual(['ts', 'principal', 'score']);
      expect(o.ts).toBe(input[i]!.ts);
      expect(o.principal).toBe(input[i]!.principal);
      expect(o.score).toBeCloseTo(byKey.get(`${input[i]!.ts}|${input[i]!.principal}|${input[i]!.path}`)!, 6);
    });
    // Not all alike: the replay order matters (the same lines in input order score otherwise).
    const inInputOrder = await scoreTrace(model, input.map((l, i) => ({ ...l, ts: i })));
    expect(out.some((o, i) => Math.abs((o.score as number) - inInputOrder[i]!) > 1e-3)).toBe(true);
  });

  it('reports every bad line by number, writes nothing and exits 2', async () => {
    const good = JSON.stringify(trace[0]);
    writeFileSync(join(dir, 'bad.jsonl'), `${good}\n{"ts":"x"}\nnot json\n\n${good}\n[1]\n`);
    const r = await ztgw(['model', 'score', '--traces', join(dir, 'bad.jsonl'), '--out', join(dir, 'bad-out.jsonl')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('bad.jsonl:2: "ts" must be a number');
    expect(r.stderr).toContain('bad.jsonl:3: not JSON');
    expect(r.stderr).toContain('bad.jsonl:6: not a JSON object');
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(existsSync(join(dir, 'bad-out.jsonl'))).toBe(false);
  });

  it('usage errors exit 2 with the usage; --help exits 0', async () => {
    const missing = await ztgw(['model', 'score', '--traces', join(dir, 'in.jsonl')]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('--out FILE is required');
    expect(missing.stderr).toContain('usage: ztgw model');
    const unknown = await ztgw(['model', 'score', '--trace', 'x']);
    expect(unknown.status).toBe(2);
    const help = await ztgw(['model', 'score', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('usage: ztgw model');
    const overview = await ztgw(['--help']);
    expect(overview.stdout).toContain('model score|eval');
  });

  it('a missing or mismatched model is a clear message, exit 2', async () => {
    writeFileSync(join(dir, 'one.jsonl'), jsonl(trace.slice(0, 3)));
    const missing = await ztgw(['model', 'score', '--traces', join(dir, 'one.jsonl'), '--out', '-', '--model', join(dir, 'nope.onnx')]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/nope\.meta\.json: no such file/);
    const meta = JSON.parse(readFileSync(META, 'utf8'));
    writeFileSync(join(dir, 'other.meta.json'), JSON.stringify({ ...meta, featureSpecHash: '0000000000000000' }));
    const mismatch = await ztgw(['model', 'score', '--traces', join(dir, 'one.jsonl'), '--out', '-', '--meta', join(dir, 'other.meta.json')]);
    expect(mismatch.status).toBe(2);
    expect(mismatch.stderr).toContain('feature spec 0000000000000000');
    expect(mismatch.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('ztgw model eval', () => {
  it('prints ROC-AUC and TPR at 1 % and 0.1 % FPR per family, beside the baseline', async () => {
    writeFileSync(join(dir, 'labelled.jsonl'), jsonl(trace));
    const r = await ztgw(['model', 'eval', '--traces', join(dir, 'labelled.jsonl'), '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(Object.keys(result.families).sort()).toEqual(['enumeration', 'flood']);
    expect(result.benignLines).toBe(trace.filter((l) => l.label === 'benign').length);
    for (const f of Object.values(result.families) as { auc: number; tpr1: number; baselineAuc: number }[]) {
      expect(f.auc).toBeGreaterThan(0.95);
      expect(f.auc).toBeGreaterThan(f.baselineAuc);
    }
    const table = await ztgw(['model', 'eval', '--traces', join(dir, 'labelled.jsonl')]);
    expect(table.status).toBe(0);
    expect(table.stdout).toContain('| family | attack lines | ROC-AUC | TPR @1% FPR | TPR @0.1% FPR |');
    expect(table.stdout).toMatch(/\| flood \| \d+ \| 0\.9\d\d \| /);
  });

  it('a line without a label is bad input', async () => {
    const { label: _label, ...unlabelled } = trace[1]!;
    writeFileSync(join(dir, 'nolabel.jsonl'), jsonl([trace[0]!, unlabelled]));
    const r = await ztgw(['model', 'eval', '--traces', join(dir, 'nolabel.jsonl')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('nolabel.jsonl:2: "label" must be a string');
  });
});

describe('ztgw serve with a risk section', () => {
  it('a missing model under onModelError: fail is a startup error naming it, exit 2', async () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'k', alg: 'ES256' }] }));
    writeFileSync(
      join(dir, 'gw.yaml'),
      `server:
  listen: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0 }
identity:
  issuers: [{ name: corp, issuer: https://idp.test.local/, audiences: [zt-gateway], algorithms: [ES256], jwksFile: jwks.json }]
routes: [{ name: echo, pathPrefix: /echo/, upstream: http://127.0.0.1:9 }]
risk: { model: models/missing.onnx }
`,
    );
    const r = await ztgw(['serve', '--config', join(dir, 'gw.yaml')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`${join(dir, 'models/missing.onnx')}: no such file`);
    expect(r.stderr).toContain('risk.model');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
