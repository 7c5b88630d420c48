// matches() in conditions: @bufbuild/re2, with compiled patterns cached and the input
// bounded (regex.ts). @bufbuild/cel alone compiled the pattern on every evaluation.
import { RE2JS } from '@bufbuild/re2';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { compileCondition, runCondition } from './cel.ts';
import { toBindings, type PolicyInput } from './input.ts';
import { BOUNDED_RE2, MATCHES_MAX_INPUT, regexProblem } from './regex.ts';

const input = (path: string): PolicyInput => ({
  request: { method: 'GET', host: 'h', path, ip: '10.0.0.1', headers: {}, time: new Date(0) },
  identity: {},
  device: {},
  risk: {},
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('matches()', () => {
  it('compiles a pattern once, not per evaluation', () => {
    const compile = vi.spyOn(RE2JS, 'compile');
    // A pattern no other test uses, so that the cache starts without it.
    const c = compileCondition('request.path.matches("^/cache-test/[0-9]+$")');
    if (!c.ok) throw new Error(JSON.stringify(c.problems));
    for (let n = 0; n < 50; n++) expect(runCondition(c.condition, toBindings(input(`/cache-test/${n}`)))).toBe(true);
    // Once when the literal was checked at load time; never again.
    expect(compile).toHaveBeenCalledTimes(1);
  });

  it('a broken pattern is remembered as broken', () => {
    const compile = vi.spyOn(RE2JS, 'compile');
    expect(regexProblem('(unclosed-cache-test')).toMatch(/missing closing \)/);
    expect(() => BOUNDED_RE2.compile('(unclosed-cache-test')).toThrow(/missing closing \)/);
    expect(compile).toHaveBeenCalledTimes(1);
  });

  it('reads at most MATCHES_MAX_INPUT characters: beyond is an error, not false', () => {
    const m = BOUNDED_RE2.compile('x$');
    expect(m.test(`${'a'.repeat(MATCHES_MAX_INPUT - 1)}x`)).toBe(true);
    expect(() => m.test(`${'a'.repeat(MATCHES_MAX_INPUT)}x`)).toThrow(`matches: the string is ${MATCHES_MAX_INPUT + 1} characters, over the limit of ${MATCHES_MAX_INPUT}`);
  });

  it('a literal pattern past 1,024 characters fails the load, at its position', () => {
    const c = compileCondition(`request.path.matches("${'a'.repeat(1025)}")`);
    expect(c).toEqual({ ok: false, problems: [{ line: 1, col: 22, kind: 'type', message: 'matches: the pattern is 1025 characters, over the limit of 1024' }] });
  });

  it('keeps answering correctly for patterns evicted from the cache', () => {
    for (let n = 0; n < 1500; n++) expect(BOUNDED_RE2.compile(`^p${n}$`).test(`p${n}`)).toBe(true);
    expect(BOUNDED_RE2.compile('^p0$').test('p0')).toBe(true);
    expect(BOUNDED_RE2.compile('^p0$').test('p1')).toBe(false);
  });
});
