// The regular-expression engine behind CEL's `s.matches(re)` in policy conditions.
//
// @bufbuild/cel runs matches() with @bufbuild/re2 (a JavaScript port of RE2: linear in
// the input, no backtracking), but compiles the pattern again on every call: about 110 µs
// per decision for an ordinary email pattern here. And linear is not cheap: from
// 0.01 µs per character for a plain literal to 0.4 µs for `^(/[a-z]+)+$`, so a client's
// 8 KB path cost one such condition 3 ms, and one client slowed everyone's decisions.
//
// So this is the same engine, given to celEnv as its `re2` (same syntax, same answers),
// with two bounds:
// - compiled patterns are kept in a bounded LRU, as glob() keeps its patterns
//   (functions.ts): a policy names a handful, and a pattern built from request data
//   cannot grow memory without bound;
// - a string longer than MATCHES_MAX_INPUT is not matched: the call is an error, which
//   never grants (evaluate.ts) — a deny or step_up rule counts it as a match. That puts
//   a ceiling of about 0.4 ms on the worst pattern, and microseconds on ordinary ones.
import { LRUCache } from 'lru-cache';
import { RE2JS } from '@bufbuild/re2';
import type { celEnv } from '@bufbuild/cel';

type Engine = NonNullable<NonNullable<Parameters<typeof celEnv>[0]>['re2']>;
type Matcher = ReturnType<Engine['compile']>;

/** Longest string (UTF-16 code units) matches() reads; longer is an error. */
export const MATCHES_MAX_INPUT = 1024;

/** Longest pattern compiled; a literal one longer fails the policy load. */
export const MATCHES_MAX_PATTERN = 1024;

// Bounded by the patterns' total length as well as their number: a compiled pattern costs
// about 4 KB for an email pattern and 200 KB for a 1.5 KB alternation once it has matched
// (its DFA cache), so 64 K characters of patterns hold about 10 MB at the very most.
const compiled = new LRUCache<string, Matcher | Error>({
  max: 1024,
  maxSize: 65_536,
  sizeCalculation: (_value, pattern) => pattern.length + 1,
});

function compile(pattern: string): Matcher {
  let found = compiled.get(pattern);
  if (found === undefined) {
    found = build(pattern);
    compiled.set(pattern, found);
  }
  // A bad pattern is remembered too: its error is as dear to find again as a match.
  if (found instanceof Error) throw found;
  return found;
}

function build(pattern: string): Matcher | Error {
  if (pattern.length > MATCHES_MAX_PATTERN) {
    return new Error(`matches: the pattern is ${pattern.length} characters, over the limit of ${MATCHES_MAX_PATTERN}`);
  }
  let re: RE2JS;
  try {
    re = RE2JS.compile(pattern);
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
  return {
    test(text: string): boolean {
      if (text.length > MATCHES_MAX_INPUT) {
        throw new Error(`matches: the string is ${text.length} characters, over the limit of ${MATCHES_MAX_INPUT}`);
      }
      return re.test(text);
    },
  };
}

/** For celEnv({ re2 }): @bufbuild/re2 with compiled patterns cached and the input bounded. */
export const BOUNDED_RE2: Engine = { compile };

/** Why `pattern` cannot be used (an RE2 syntax error, too long), or undefined: for literal patterns at load time. */
export function regexProblem(pattern: string): string | undefined {
  try {
    compile(pattern);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}
