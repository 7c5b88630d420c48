// A second way to run a condition: compiled to a JavaScript function over the plain
// PolicyInput, for the part of CEL policies are written in (&&, ||, !, ?:, ==, !=, <,
// <=, >, >=, in, has(), field reads, map["key"], startsWith/endsWith/contains, and the
// helpers). @bufbuild/cel remains the definition: this path answers true or false only
// where @bufbuild/cel would answer the same, and otherwise says "unsure", and the
// condition is run by @bufbuild/cel (evalCondition in cel.ts).
//
// Why: through @bufbuild/cel a decision for a route with 10 rules cost 70 µs p50 and
// 120 µs p99 here (test/bench/policy-decisions.ts), against a target of 25 µs p99: the
// input converted into CEL maps (7 µs), and per field read a qualified-name lookup in the
// protobuf registry and a map copy or list wrapper, per operator an overload search. An
// interpreter over closures reading the plain input cut the 10 conditions to 6 µs, most
// of it megamorphic calls and property loads; compiled to one function per condition,
// with property loads the JIT can specialise, they cost 1–2 µs.
//
// Why generating code is acceptable here: the text generated is fixed templates around
// the expression's structure; what comes from the policy is only string literals and
// field names, always written with JSON.stringify, and numbers written from their
// parsed values. Ajv (load.ts, the config) compiles schemas with `new Function` the same
// way. Where code generation is disabled (--disallow-code-generation-from-strings),
// compileDirect returns undefined and @bufbuild/cel runs every condition.
//
// How it stays exact:
// - Only whole conditions made of the nodes below take this path; a condition with any
//   other node (comprehensions, arithmetic, timestamps and durations, conversions,
//   literals of maps, uint, null or bytes) is left to @bufbuild/cel.
// - At run time each node checks that its operands are of the types it handles exactly
//   as @bufbuild/cel does, and anything else is "unsure": an absent field, null, a
//   comparison across types other than int/double, a Date other than the three declared
//   timestamp fields, a helper that throws. Where @bufbuild/cel would report an error
//   this path is therefore always unsure, so errors, their messages and the zero-trust
//   reading of them all come from @bufbuild/cel.
// - Fields are own enumerable properties only (propertyIsEnumerable: exactly what
//   Object.entries in input.ts sees): a polluted Object.prototype cannot supply a missing
//   `device.enrolled`, and a hidden property is as absent here as it is to CEL.
// - direct.test.ts runs the conditions of the shipped policies, of the benchmark and a
//   set of awkward ones over many inputs both ways, and requires the same answers.
import type { parse } from '@bufbuild/cel';
import { glob, hourIn, ipIn, weekdayIn } from './functions.ts';
import type { PolicyInput } from './input.ts';

type Expr = NonNullable<ReturnType<typeof parse>['expr']>;

type Primitive = string | boolean | number | bigint;
type Map_ = Readonly<Record<string, unknown>>;
/** A CEL value as the input holds it: string, bool, double (number), int (bigint), timestamp (Date), list (array), map (object). */
type Value = Primitive | Date | readonly unknown[] | Map_;

/** Thrown inside a compiled condition and caught around it: this input is for @bufbuild/cel to decide. */
const UNSURE = Symbol('unsure');

class Unsupported extends Error {}

/** The condition as a function of the input: true or false, or undefined when @bufbuild/cel must decide. */
export type DirectCondition = (input: PolicyInput) => boolean | undefined;

/** undefined when the expression uses something this path does not handle. */
export function compileDirect(expr: Expr): DirectCondition | undefined {
  let fn: (input: PolicyInput) => Value;
  try {
    const g = new Generator();
    const body = g.gen(expr);
    const temps = g.temps > 0 ? `let ${Array.from({ length: g.temps }, (_, n) => `t${n}`).join(', ')};` : '';
    const source = `"use strict"; const { ${Object.keys(RUNTIME).join(', ')} } = $; const K = $$; return function condition(i) { ${temps} return ${body}; };`;
    fn = new Function('$', '$$', source)(RUNTIME, g.constants) as typeof fn;
  } catch (err) {
    // Unsupported, or code generation disabled (EvalError): @bufbuild/cel alone.
    if (err instanceof Unsupported || err instanceof EvalError) return undefined;
    throw err;
  }
  return (input) => {
    try {
      const v = fn(input);
      return typeof v === 'boolean' ? v : undefined;
    } catch {
      // UNSURE, or a helper's own error (a malformed address): @bufbuild/cel reports it.
      return undefined;
    }
  };
}

// ── values: what the generated code calls ───────────────────────────────────────────

const unsure = (): never => {
  throw UNSURE;
};

/**
 * How @bufbuild/cel sees the value at a path (input.ts toBindings):
 * - RECORD: bound entry by entry (celRecord): the object's own entries, Dates among them
 *   as timestamps;
 * - TIMESTAMP: a field of a record holding a Date;
 * - PLAIN: anything else (claims and what is inside them), converted by @bufbuild/cel's
 *   toCel() when read: a map only if a plain object (`constructor.name === "Object"`),
 *   a Date an error.
 */
const RECORD = 0;
const TIMESTAMP = 1;
const PLAIN = 2;
type Kind = typeof RECORD | typeof TIMESTAMP | typeof PLAIN;

const VARIABLES = new Set(['request', 'identity', 'device', 'risk']);
const KINDS: ReadonlyMap<string, Kind> = new Map([
  ...[...VARIABLES, 'request.headers', 'device.posture'].map((p): [string, Kind] => [p, RECORD]),
  ...['request.time', 'identity.auth_time', 'device.posture.last_check_in'].map((p): [string, Kind] => [p, TIMESTAMP]),
]);
const kindOf = (path: string | undefined): Kind => (path === undefined ? PLAIN : (KINDS.get(path) ?? PLAIN));

/**
 * A record as celRecord binds it: any object's own entries. A list is left to
 * @bufbuild/cel (its indexes would be keys there); a Date has no own entries, so reads
 * of it are absent here as there.
 */
const isRecord = (v: unknown): v is Map_ => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A map as toCel() makes one, conservatively: an object literal or JSON object, nothing
 * with its own "constructor", and nothing with a "$typeName" key. To @bufbuild/cel (through
 * @bufbuild/protobuf's isMessage) an object with a string `$typeName` is a protobuf message:
 * a wrapper such as `{"$typeName": "google.protobuf.BoolValue", "value": true}` reads as
 * `true`, any other name is an error. A claim is JSON the IdP signed, and may carry one.
 */
const isPlainMap = (v: unknown): v is Map_ =>
  typeof v === 'object' &&
  v !== null &&
  Object.getPrototypeOf(v) === Object.prototype &&
  (v as { constructor: unknown }).constructor === Object &&
  !('$typeName' in v);

/** A value read at a path of `kind`, as @bufbuild/cel would give it, or UNSURE. */
function value(v: unknown, kind: Kind): Value {
  switch (typeof v) {
    case 'string':
    case 'boolean':
    case 'number':
    case 'bigint':
      return v;
    case 'object':
      if (v === null) return unsure();
      // A record (request.headers, device.posture) is a map to CEL even when given as an array.
      if (Array.isArray(v)) return kind === RECORD ? unsure() : v;
      if (v instanceof Date) {
        // An invalid Date makes toBindings() throw for the whole decision, and
        // decisionScope() keeps that; here it is simply not handled.
        return kind === TIMESTAMP && !Number.isNaN(v.getTime()) ? v : unsure();
      }
      if (kind === RECORD ? isRecord(v) : isPlainMap(v)) return v as Map_;
      return unsure();
    default:
      // undefined: absent, "field not found" there.
      return unsure();
  }
}

/**
 * has(map.name), and `name in map`, given the value found: @bufbuild/cel's map.has() is
 * `get(name) != undefined`, so null is absent; a value it could not convert is an error there.
 */
function presentValue(v: unknown, kind: Kind): boolean {
  if (v === undefined || v === null) return false;
  value(v, kind);
  return true;
}

const isPrimitive = (v: unknown): v is Primitive =>
  typeof v === 'string' || typeof v === 'boolean' || typeof v === 'number' || typeof v === 'bigint';

/** @bufbuild/cel's equals() on two primitives: int and double compare by value, other types are never equal. */
function primitiveEquals(a: Primitive, b: Primitive): boolean {
  if (a === b) return true;
  const numbers = (typeof a === 'number' || typeof a === 'bigint') && (typeof b === 'number' || typeof b === 'bigint');
  // Loose equality: an int (bigint) against a double (number) by value, as @bufbuild/cel's equals() does.
  return numbers && a == b;
}

type Order = (x: Primitive, y: Primitive) => boolean;

/** The ordering overloads @bufbuild/cel has for primitives: same type, or int against double (as Number). */
const ordered =
  (cmp: Order) =>
  (a: Value, b: Value): boolean => {
    const ta = typeof a;
    const tb = typeof b;
    if (ta === tb && (ta === 'string' || ta === 'number' || ta === 'bigint' || ta === 'boolean')) return cmp(a as Primitive, b as Primitive);
    if (ta === 'bigint' && tb === 'number') return cmp(Number(a), b as number);
    if (ta === 'number' && tb === 'bigint') return cmp(a as number, Number(b));
    return unsure();
  };

/** `x in list`: @bufbuild/cel's inList, equals(element, x) for each element in order. */
function inList(x: Value, list: readonly unknown[]): boolean {
  if (!isPrimitive(x)) return unsure();
  for (const e of list) {
    if (!isPrimitive(e)) return unsure();
    if (primitiveEquals(e, x)) return true;
  }
  return false;
}

/** 0n … 23n: the values BigInt() makes for an hour or a weekday, without making them per call. */
const SMALL_INTS: readonly bigint[] = Array.from({ length: 24 }, (_, n) => BigInt(n));

/** What the generated code can call, by these names. */
const RUNTIME = {
  hasOwn: Object.prototype.propertyIsEnumerable,
  U: unsure,
  /** A variable, request.headers or device.posture: a record. */
  R: (v: unknown): Map_ => (isRecord(v) ? v : unsure()),
  /** Anything else selected from: a plain map. */
  P: (v: unknown): Map_ => (isPlainMap(v) ? v : unsure()),
  V: value,
  PV: presentValue,
  B: (v: Value): boolean => (typeof v === 'boolean' ? v : unsure()),
  S: (v: Value): string => (typeof v === 'string' ? v : unsure()),
  T: (v: Value): Date => (v instanceof Date ? v : unsure()),
  EQ: (a: Value, b: Value): boolean => (isPrimitive(a) && isPrimitive(b) ? primitiveEquals(a, b) : unsure()),
  LT: ordered((x, y) => x < y),
  LE: ordered((x, y) => x <= y),
  GT: ordered((x, y) => x > y),
  GE: ordered((x, y) => x >= y),
  /** Not a string: equal to no string of a literal list if a primitive, else unsure. */
  NS: (v: Value): boolean => (isPrimitive(v) ? false : unsure()),
  IL: inList,
  /** `x in container`: a list, or a map and a string key; other key types are for @bufbuild/cel. */
  IN: (x: Value, container: Value, containerKind: Kind): boolean => {
    if (Array.isArray(container)) return containerKind === RECORD ? unsure() : inList(x, container);
    if (typeof x !== 'string') return unsure();
    const map = containerKind === RECORD ? RUNTIME.R(container) : RUNTIME.P(container);
    return Object.prototype.propertyIsEnumerable.call(map, x) && presentValue(map[x], PLAIN);
  },
  // The helpers as cel.ts registers them with @bufbuild/cel: the same functions and
  // argument types, hour and weekday as CEL ints.
  ipIn,
  glob,
  HOUR: (ts: Date, tz: string): bigint => SMALL_INTS[hourIn(ts, tz)]!,
  WEEKDAY: (ts: Date, tz: string): bigint => SMALL_INTS[weekdayIn(ts, tz)]!,
};

// ── compiling ────────────────────────────────────────────────────────────────────────

/** `a.b.c` for a chain of field selections on a variable; undefined for anything else. */
function pathOf(e: Expr): string | undefined {
  const k = e.exprKind;
  if (k.case === 'identExpr') return VARIABLES.has(k.value.name) ? k.value.name : undefined;
  if (k.case === 'selectExpr' && !k.value.testOnly && k.value.operand !== undefined) {
    const parent = pathOf(k.value.operand);
    return parent === undefined ? undefined : `${parent}.${k.value.field}`;
  }
  return undefined;
}

function constant(e: Expr): Primitive | undefined {
  if (e.exprKind.case !== 'constExpr') return undefined;
  const c = e.exprKind.value.constantKind;
  switch (c.case) {
    case 'stringValue':
    case 'boolValue':
    case 'doubleValue':
    case 'int64Value':
      return c.value;
    default:
      return undefined;
  }
}

/** The operands of a chain of one operator, left to right: `a && b && c` parses as a tree of `_&&_`. */
function chain(fn: string, e: Expr, out: Expr[] = []): Expr[] {
  const k = e.exprKind;
  if (k.case === 'callExpr' && k.value.function === fn && k.value.target === undefined && k.value.args.length === 2) {
    chain(fn, k.value.args[0]!, out);
    chain(fn, k.value.args[1]!, out);
  } else {
    out.push(e);
  }
  return out;
}

const STRING_METHODS: Readonly<Record<string, string>> = { startsWith: 'startsWith', endsWith: 'endsWith', contains: 'includes' };
const ORDERS: Readonly<Record<string, { helper: string; op: string }>> = {
  '_<_': { helper: 'LT', op: '<' },
  '_<=_': { helper: 'LE', op: '<=' },
  '_>_': { helper: 'GT', op: '>' },
  '_>=_': { helper: 'GE', op: '>=' },
};
const HELPERS: Readonly<Record<string, (a: string, b: string) => string>> = {
  ip_in: (a, b) => `ipIn(S(${a}), S(${b}))`,
  glob: (a, b) => `glob(S(${a}), S(${b}))`,
  hour_in: (a, b) => `HOUR(T(${a}), S(${b}))`,
  weekday_in: (a, b) => `WEEKDAY(T(${a}), S(${b}))`,
};
const ARITY: Readonly<Record<string, number>> = {
  '!_': 1,
  '_?_:_': 3,
  '_==_': 2,
  '_!=_': 2,
  '@in': 2,
  '_[_]': 2,
  ...Object.fromEntries(Object.keys(ORDERS).map((name) => [name, 2])),
  ...Object.fromEntries(Object.keys(HELPERS).map((name) => [name, 2])),
};
const own = <T>(table: Readonly<Record<string, T>>, key: string): T | undefined => (Object.hasOwn(table, key) ? table[key] : undefined);

/** Literal lists up to this long are compared inline; longer ones are looked up in a Set. */
const INLINE_LIST = 8;

/**
 * From an expression to the text of a JavaScript expression over `i` (the input) that
 * evaluates to the CEL value or throws UNSURE. Every piece of policy text is written
 * through `literal` (JSON.stringify for strings); temporaries are t0, t1, ….
 */
class Generator {
  temps = 0;
  /** Values the code reads as K[n] (Sets, lists, doubles that are not finite). */
  readonly constants: unknown[] = [];

  private temp(): string {
    return `t${this.temps++}`;
  }

  private constant(v: unknown): string {
    this.constants.push(v);
    return `K[${this.constants.length - 1}]`;
  }

  literal(v: Primitive): string {
    switch (typeof v) {
      case 'string':
        return JSON.stringify(v);
      case 'boolean':
        return v ? 'true' : 'false';
      case 'bigint':
        return `(${v.toString()}n)`;
      default:
        // String() is the shortest text that parses back to the same double, except for -0.
        return Number.isFinite(v) && !Object.is(v, -0) ? `(${String(v)})` : this.constant(v);
    }
  }

  gen(e: Expr): string {
    const k = e.exprKind;
    switch (k.case) {
      case 'constExpr': {
        const c = constant(e);
        if (c === undefined) throw new Unsupported();
        return this.literal(c);
      }
      case 'identExpr':
        if (!VARIABLES.has(k.value.name)) throw new Unsupported();
        return `R(i.${k.value.name})`;
      case 'selectExpr': {
        const { field, testOnly, operand } = k.value;
        if (operand === undefined) throw new Unsupported();
        const parent = pathOf(operand);
        // On a variable, read it as is: read() checks it is a record.
        const map = operand.exprKind.case === 'identExpr' && parent !== undefined ? `i.${parent}` : this.gen(operand);
        return this.read(map, kindOf(parent), field, parent === undefined ? PLAIN : kindOf(`${parent}.${field}`), testOnly);
      }
      case 'callExpr':
        return this.call(e, k.value.function, k.value.target, k.value.args);
      default:
        throw new Unsupported();
    }
  }

  /** map.name, or has(map.name): an own property only. */
  private read(map: string, mapKind: Kind, name: string, kind: Kind, test: boolean): string {
    const t = this.temp();
    const key = JSON.stringify(name);
    const check = mapKind === RECORD ? 'R' : 'P';
    return test
      ? `(${t} = ${check}(${map}), hasOwn.call(${t}, ${key}) ? PV(${t}[${key}], ${kind}) : false)`
      : `(${t} = ${check}(${map}), hasOwn.call(${t}, ${key}) ? V(${t}[${key}], ${kind}) : U())`;
  }

  private call(e: Expr, fn: string, target: Expr | undefined, args: readonly Expr[]): string {
    if (target !== undefined) {
      const method = own(STRING_METHODS, fn);
      if (method === undefined || args.length !== 1) throw new Unsupported();
      return `S(${this.gen(target)}).${method}(S(${this.gen(args[0]!)}))`;
    }
    if ((fn === '_&&_' || fn === '_||_') && args.length === 2) {
      // A whole chain, left to right; the first false (&&) or true (||) decides, as in
      // @bufbuild/cel when no operand errs (an operand that errs is unsure here).
      return `(${chain(fn, e)
        .map((x) => `B(${this.gen(x)})`)
        .join(fn === '_&&_' ? ' && ' : ' || ')})`;
    }
    if (own(ARITY, fn) !== args.length) throw new Unsupported();
    const [a, b, c] = args as [Expr, Expr, Expr];
    const lit = b === undefined ? undefined : constant(b);
    switch (fn) {
      case '!_':
        return `(!B(${this.gen(a)}))`;
      case '_?_:_':
        return `(B(${this.gen(a)}) ? ${this.gen(b)} : ${this.gen(c)})`;
      case '_==_':
      case '_!=_': {
        const not = fn === '_!=_' ? '!' : '';
        if (typeof lit === 'string') {
          // The common `request.method == "GET"`: a string is equal to a string literal only if identical.
          const t = this.temp();
          return `${not}(${t} = ${this.gen(a)}, typeof ${t} === "string" ? ${t} === ${this.literal(lit)} : EQ(${t}, ${this.literal(lit)}))`;
        }
        return `${not}EQ(${this.gen(a)}, ${this.gen(b)})`;
      }
      case '@in':
        if (b.exprKind.case === 'listExpr') return this.inLiteral(a, b);
        return `IN(${this.gen(a)}, ${this.gen(b)}, ${kindOf(pathOf(b))})`;
      case '_[_]': {
        // Only map["literal"]: list indexes and computed keys stay with @bufbuild/cel.
        if (typeof lit !== 'string') throw new Unsupported();
        return this.read(this.gen(a), kindOf(pathOf(a)), lit, PLAIN, false);
      }
      default: {
        const order = own(ORDERS, fn);
        if (order !== undefined) {
          if (typeof lit === 'bigint' || typeof lit === 'number') {
            // `hour_in(…) >= 8`, `risk.score > 0.9`: the same type compares directly.
            const t = this.temp();
            return `(${t} = ${this.gen(a)}, typeof ${t} === "${typeof lit}" ? ${t} ${order.op} ${this.literal(lit)} : ${order.helper}(${t}, ${this.literal(lit)}))`;
          }
          return `${order.helper}(${this.gen(a)}, ${this.gen(b)})`;
        }
        const helper = own(HELPERS, fn);
        if (helper === undefined) throw new Unsupported();
        return helper(this.gen(a), this.gen(b));
      }
    }
  }

  /** `x in [literals]`: compared inline, or looked up in a Set built once. */
  private inLiteral(xExpr: Expr, listExpr: Expr): string {
    if (listExpr.exprKind.case !== 'listExpr' || listExpr.exprKind.value.optionalIndices.length > 0) throw new Unsupported();
    const list = listExpr.exprKind.value.elements.map(constant);
    if (list.some((c) => c === undefined)) throw new Unsupported();
    const values = list as Primitive[];
    const x = this.gen(xExpr);
    const t = this.temp();
    // All strings, or all ints: a value of that type is in the list only if identical to
    // an element (SameValueZero, as === for these); any other value goes through inList,
    // which also finds 2.0 among ints.
    for (const type of ['string', 'bigint'] as const) {
      if (!values.every((v) => typeof v === type)) continue;
      const found =
        values.length <= INLINE_LIST
          ? values.length === 0
            ? 'false'
            : values.map((v) => `${t} === ${this.literal(v)}`).join(' || ')
          : `${this.constant(new Set(values))}.has(${t})`;
      const other = type === 'string' ? `NS(${t})` : `IL(${t}, ${this.constant(values)})`;
      return `(${t} = ${x}, typeof ${t} === "${type}" ? (${found}) : ${other})`;
    }
    return `IL(${x}, ${this.constant(values)})`;
  }
}
