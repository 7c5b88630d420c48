// Any policy text yields problems or a condition, and any condition a decision: nothing
// a policy author (or an attacker with write access to the policy repository) writes may
// make compiling, loading or evaluating throw. Random and adversarial CEL (prototype
// names, unicode escapes, nesting past every limit, huge literals), seeded, so that a
// failure reproduces: the message names the seed and the text.
import { describe, expect, it } from 'vitest';
import { adversarialConditions, createFuzzer } from '../../test/helpers/cel-fuzz.ts';
import { random } from '../../test/helpers/random.ts';
import { compileCondition, evalCondition, runCondition, type CompiledCondition } from './cel.ts';
import { createEvaluator } from './evaluate.ts';
import { decisionScope, toBindings, type PolicyInput } from './input.ts';
import { compilePolicyFiles } from './load.ts';

const INPUTS: PolicyInput[] = [
  {
    request: {
      method: 'GET',
      host: 'code.example.com',
      path: '/api/repos',
      route: 'code',
      ip: '10.1.2.3',
      headers: { 'x-tenant': 'acme', constructor: 'x' },
      time: new Date('2024-06-03T08:30:00Z'),
    },
    identity: {
      sub: 'alice',
      groups: ['eng'],
      // As a token's payload is parsed: "__proto__" an own key, "$typeName" a message to @bufbuild/cel.
      claims: JSON.parse('{"__proto__": {"admin": true}, "role": {"$typeName": "google.protobuf.BoolValue", "value": true}, "n": 1e308, "l": [[1], {"a": null}]}') as Record<string, unknown>,
      amr: ['pwd'],
    },
    device: { id: 'd', binding: 'dpop', enrolled: true, owner_match: true, posture: { managed: true, disk_encrypted: true, os: '', os_version: '', trust: 'high' } },
    risk: { score: 0.5, flagged: false },
  },
  // Anonymous, no device, a path past the matches() bound.
  {
    request: { method: 'POST', host: 'h', path: `/${'a/'.repeat(1000)}`, ip: '::ffff:10.0.0.1', headers: {}, time: new Date(0) },
    identity: {},
    device: {},
    risk: {},
  },
];

/** Compiling, evaluating both ways and loading as a policy file: each answer, or the exception that escaped. */
function exercise(text: string): string[] {
  const escaped: string[] = [];
  const guard = (what: string, f: () => void) => {
    try {
      f();
    } catch (err) {
      escaped.push(`${what}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    }
  };
  let condition: CompiledCondition | undefined;
  guard('compileCondition', () => {
    const r = compileCondition(text);
    if (r.ok) condition = r.condition;
    else if (r.problems.length === 0 || r.problems.some((p) => !(p.line >= 1 && p.col >= 1))) escaped.push(`problems without a position: ${JSON.stringify(r.problems)}`);
  });
  if (condition !== undefined) {
    for (const input of INPUTS) {
      guard('evaluate', () => {
        const got = evalCondition(condition!, decisionScope(input));
        const reference = runCondition(condition!, toBindings(input));
        if (typeof got !== 'boolean' && typeof got?.error !== 'string') escaped.push(`not a result: ${String(got)}`);
        // The compiled path answers as @bufbuild/cel does, or leaves it to it.
        if (typeof got === 'boolean' && got !== reference) escaped.push(`direct ${got}, @bufbuild/cel ${JSON.stringify(reference)}`);
      });
    }
  }
  guard('load', () => {
    const file = `apiVersion: zt-gateway/v1\nname: fuzz\nrules:\n  - name: r\n    effect: allow\n    when: ${JSON.stringify(text)}\n`;
    const loaded = compilePolicyFiles([{ file: 'fuzz.yaml', text: file }], undefined);
    if (!loaded.ok) return;
    const evaluator = createEvaluator(loaded.set);
    for (const input of INPUTS) {
      const d = evaluator.evaluate(input);
      // An allow rule that errs never grants.
      if (d.effect === 'allow' && d.errors.length > 0) escaped.push(`allowed despite ${d.errors[0]!.message}`);
    }
  });
  return escaped;
}

describe('fuzz: compiling, loading and evaluating never throw', () => {
  it('adversarial conditions: prototype names, nesting and length past every limit, huge literals', () => {
    const failures = adversarialConditions().flatMap((text) => exercise(text).map((e) => `${JSON.stringify(text.slice(0, 80))}: ${e}`));
    expect(failures).toEqual([]);
  }, 60_000);

  it('random conditions (seeded): structured, token soup and mutations', () => {
    const seed = Number(process.env.FUZZ_SEED ?? 13);
    const count = Number(process.env.FUZZ_COUNT ?? 1500);
    const fuzzer = createFuzzer(random(seed));
    const failures: string[] = [];
    let compiled = 0;
    for (let n = 0; n < count; n++) {
      const text = fuzzer.condition();
      if (compileCondition(text).ok) compiled++;
      for (const e of exercise(text)) failures.push(`seed ${seed} #${n} ${JSON.stringify(text.slice(0, 120))}: ${e}`);
    }
    expect(failures.slice(0, 10)).toEqual([]);
    // Not only syntax errors: enough of them compile that evaluation is exercised too.
    expect(compiled / count).toBeGreaterThan(0.05);
  }, 60_000);
});
