// What the checker accepts from CEL's standard library: the overloads of the CEL spec
// (langdef.md, "Standard Definitions") that @bufbuild/cel 0.6.1 also implements.
// Deliberately left out, so a policy cannot load with them:
// - timestamp(int): @bufbuild/cel reads the int as milliseconds, the spec as seconds.
// - duration(int): not in the spec; @bufbuild/cel reads seconds.
// - matches(s, re) as a global function: @bufbuild/cel only has the method s.matches(re).
import { isCelError, run } from '@bufbuild/cel';
import { T, type CelT, type FuncDecl } from './check.ts';
import { regexProblem } from './regex.ts';

const A = T.param('A');
const K = T.param('K');
const V = T.param('V');
const { bool, int, uint, double, string, bytes, timestamp, duration, dyn, type } = T;

const fn = (name: string, args: CelT[], result: CelT): FuncDecl => ({ name, args, result });
const method = (name: string, receiver: CelT, args: CelT[], result: CelT): FuncDecl => ({ name, receiver, args, result });

/**
 * Validates a literal argument by running the very code that will run per request, so
 * `duration("1x")` or a broken regex fails the load rather than every request.
 */
const literal =
  (arg: number, probe: string) =>
  (literals: readonly unknown[]): { arg: number; message: string } | undefined => {
    const value = literals[arg];
    if (typeof value !== 'string') return undefined;
    const result = run(probe, { x: value });
    return isCelError(result) ? { arg, message: result.message } : undefined;
  };

const NUMBERS = [int, uint, double];
const ORDERED: [CelT, CelT][] = [
  [bool, bool],
  [bytes, bytes],
  [string, string],
  [timestamp, timestamp],
  [duration, duration],
  // Cross-type numeric ordering is in the spec (and in @bufbuild/cel); equality is not.
  ...NUMBERS.flatMap((x) => NUMBERS.map((y): [CelT, CelT] => [x, y])),
];

const TIMESTAMP_PARTS = [
  'getFullYear',
  'getMonth',
  'getDate',
  'getDayOfMonth',
  'getDayOfWeek',
  'getDayOfYear',
  'getHours',
  'getMinutes',
  'getSeconds',
  'getMilliseconds',
];
const DURATION_PARTS = ['getHours', 'getMinutes', 'getSeconds', 'getMilliseconds'];

export const STANDARD_FUNCTIONS: readonly FuncDecl[] = [
  fn('!_', [bool], bool),
  fn('_&&_', [bool, bool], bool),
  fn('_||_', [bool, bool], bool),
  fn('@not_strictly_false', [bool], bool),
  fn('_?_:_', [bool, A, A], A),
  fn('_==_', [A, A], bool),
  fn('_!=_', [A, A], bool),
  ...['_<_', '_<=_', '_>_', '_>=_'].flatMap((op) => ORDERED.map(([x, y]) => fn(op, [x, y], bool))),

  fn('-_', [int], int),
  fn('-_', [double], double),
  ...['_+_', '_-_', '_*_', '_/_'].flatMap((op) => NUMBERS.map((n) => fn(op, [n, n], n))),
  fn('_%_', [int, int], int),
  fn('_%_', [uint, uint], uint),
  fn('_+_', [string, string], string),
  fn('_+_', [bytes, bytes], bytes),
  fn('_+_', [T.list(A), T.list(A)], T.list(A)),
  fn('_+_', [duration, duration], duration),
  fn('_+_', [timestamp, duration], timestamp),
  fn('_+_', [duration, timestamp], timestamp),
  fn('_-_', [timestamp, timestamp], duration),
  fn('_-_', [timestamp, duration], timestamp),
  fn('_-_', [duration, duration], duration),

  fn('_[_]', [T.list(A), int], A),
  fn('_[_]', [T.map(K, V), K], V),
  fn('@in', [A, T.list(A)], bool),
  fn('@in', [K, T.map(K, V)], bool),

  ...[string, bytes, T.list(A), T.map(K, V)].flatMap((t) => [fn('size', [t], int), method('size', t, [], int)]),
  ...['contains', 'startsWith', 'endsWith'].map((name) => method(name, string, [string], bool)),
  // The pattern through the engine conditions run with (regex.ts): RE2 syntax, and its length bound.
  {
    ...method('matches', string, [string], bool),
    literals: ([pattern]) => {
      const message = typeof pattern === 'string' ? regexProblem(pattern) : undefined;
      return message === undefined ? undefined : { arg: 0, message };
    },
  },

  ...TIMESTAMP_PARTS.flatMap((name) => [method(name, timestamp, [], int), method(name, timestamp, [string], int)]),
  ...DURATION_PARTS.map((name) => method(name, duration, [], int)),

  ...[int, uint, double, string, timestamp, duration].map((t) => fn('int', [t], int)),
  ...[uint, int, double, string].map((t) => fn('uint', [t], uint)),
  ...[double, int, uint, string].map((t) => fn('double', [t], double)),
  ...[string, bool, int, uint, double, bytes, timestamp, duration].map((t) => fn('string', [t], string)),
  fn('bool', [bool], bool),
  fn('bool', [string], bool),
  fn('bytes', [bytes], bytes),
  fn('bytes', [string], bytes),
  fn('timestamp', [timestamp], timestamp),
  { ...fn('timestamp', [string], timestamp), literals: literal(0, 'timestamp(x)') },
  fn('duration', [duration], duration),
  { ...fn('duration', [string], duration), literals: literal(0, 'duration(x)') },
  fn('type', [A], type),
  fn('dyn', [A], dyn),
];
