// A CEL type checker over the AST that @bufbuild/cel's parser produces.
//
// Why our own: @bufbuild/cel 0.6.1 evaluates the whole language but its checker
// (`check`, not exported from the package index anyway) only types constants and
// identifiers — any call or field selection throws "Unsupported expression kind". And it
// can only describe structured variables as protobuf messages. Policies need the
// mistakes caught at load time — `identity.groups == 3`, `request.mehtod`, an unknown
// function, `device.posture.trust == "hgih"` — because at request time a mistake in a
// deny rule would quietly never match. So the declared context is described here in a
// small type language (objects with documented fields), checked here, and evaluated by
// @bufbuild/cel with the values bound as plain maps.
//
// The checker is gradual, as CEL's is: `dyn` (claims, a JSON value) is compatible with
// everything, and the runtime catches what remains. Overloads follow the CEL spec's
// standard definitions (see stdlib.ts); a type variable ("A") unifies within one call.
import type { parse } from '@bufbuild/cel';

type ParsedExpr = ReturnType<typeof parse>;
type Expr = ParsedExpr['expr'];

type ScalarKind = 'bool' | 'int' | 'uint' | 'double' | 'string' | 'bytes' | 'null_type' | 'timestamp' | 'duration' | 'type' | 'dyn';

export type CelT =
  /** `values`: a string field that only ever holds these (comparing with another literal is a mistake). */
  | { readonly kind: ScalarKind; readonly values?: readonly string[] }
  | { readonly kind: 'list'; readonly elem: CelT }
  | { readonly kind: 'map'; readonly key: CelT; readonly value: CelT }
  /** A declared structure; bound at run time as a map, so an absent field is a runtime error and `has()` tests it. */
  | { readonly kind: 'object'; readonly name: string; readonly fields: Readonly<Record<string, FieldDecl>> }
  /** A type variable, only in function signatures. */
  | { readonly kind: 'param'; readonly name: string };

export interface FieldDecl {
  readonly type: CelT;
  readonly doc: string;
}

export interface FuncDecl {
  readonly name: string;
  /** Set for methods (`x.f()`), unset for global functions (`f(x)`). */
  readonly receiver?: CelT;
  readonly args: readonly CelT[];
  readonly result: CelT;
  /** Load-time check of literal arguments: `literals[i]` is argument i's value when it is a constant. */
  readonly literals?: (literals: readonly unknown[]) => { arg: number; message: string } | undefined;
}

export interface CheckEnv {
  readonly variables: Readonly<Record<string, CelT>>;
  readonly functions: readonly FuncDecl[];
}

export interface CheckIssue {
  /** Offset into the expression text. */
  offset: number;
  message: string;
}

const scalar = <K extends ScalarKind>(kind: K) => Object.freeze({ kind });
export const T = {
  bool: scalar('bool'),
  int: scalar('int'),
  uint: scalar('uint'),
  double: scalar('double'),
  string: scalar('string'),
  bytes: scalar('bytes'),
  null: scalar('null_type'),
  timestamp: scalar('timestamp'),
  duration: scalar('duration'),
  type: scalar('type'),
  dyn: scalar('dyn'),
  enum: (values: readonly string[]): CelT => ({ kind: 'string', values }),
  list: (elem: CelT): CelT => ({ kind: 'list', elem }),
  map: (key: CelT, value: CelT): CelT => ({ kind: 'map', key, value }),
  object: (name: string, fields: Record<string, FieldDecl>): CelT => ({ kind: 'object', name, fields }),
  param: (name: string): CelT => ({ kind: 'param', name }),
} as const;

// Type names are values in CEL (`type(x) == string`).
const TYPE_NAMES = new Set(['bool', 'int', 'uint', 'double', 'string', 'bytes', 'list', 'map', 'null_type', 'type']);

export function formatType(t: CelT): string {
  switch (t.kind) {
    case 'list':
      return `list<${formatType(t.elem)}>`;
    case 'map':
      return `map<${formatType(t.key)}, ${formatType(t.value)}>`;
    case 'object':
    case 'param':
      return t.name;
    default:
      return t.kind;
  }
}

/** `_==_` → `==`, `@in` → `in`: the operator as the policy author wrote it. */
function operatorName(fn: string): string {
  if (fn === '@in') return 'in';
  if (fn === '_[_]') return '[]';
  if (fn === '_?_:_') return '?:';
  return fn.replaceAll('_', '') || fn;
}

/** The common type of two, or undefined when they have none; `dyn` absorbs. */
function join(x: CelT, y: CelT): CelT | undefined {
  if (x.kind === 'dyn' || y.kind === 'dyn') return T.dyn;
  if (x.kind === 'list' && y.kind === 'list') {
    const elem = join(x.elem, y.elem);
    return elem && T.list(elem);
  }
  if (x.kind === 'map' && y.kind === 'map') {
    const key = join(x.key, y.key);
    const value = join(x.value, y.value);
    return key && value && T.map(key, value);
  }
  if (x.kind === 'object' && y.kind === 'object') return x.name === y.name ? x : undefined;
  if (x.kind !== y.kind || x.kind === 'param') return undefined;
  return scalar(x.kind as ScalarKind);
}

function unify(p: CelT, a: CelT, bound: Map<string, CelT>): boolean {
  if (p.kind === 'param') {
    const previous = bound.get(p.name);
    const joined = previous === undefined ? a : join(previous, a);
    if (joined === undefined) return false;
    bound.set(p.name, joined);
    return true;
  }
  if (p.kind === 'dyn' || a.kind === 'dyn') return true;
  if (p.kind === 'list') return a.kind === 'list' && unify(p.elem, a.elem, bound);
  if (p.kind === 'map') return a.kind === 'map' && unify(p.key, a.key, bound) && unify(p.value, a.value, bound);
  if (p.kind === 'object') return a.kind === 'object' && a.name === p.name;
  return p.kind === a.kind;
}

function substitute(t: CelT, bound: Map<string, CelT>): CelT {
  if (t.kind === 'param') return bound.get(t.name) ?? T.dyn;
  if (t.kind === 'list') return T.list(substitute(t.elem, bound));
  if (t.kind === 'map') return T.map(substitute(t.key, bound), substitute(t.value, bound));
  return t;
}

function sameType(x: CelT, y: CelT): boolean {
  return formatType(x) === formatType(y);
}

function literalValue(e: Expr): unknown {
  return e.exprKind.case === 'constExpr' ? e.exprKind.value.constantKind.value : undefined;
}

/** Compile the environment once; the returned function types one parsed expression. */
export function createChecker(env: CheckEnv): (parsed: ParsedExpr) => { type: CelT; issues: CheckIssue[] } {
  const functions = Map.groupBy(env.functions.filter((f) => !f.receiver), (f) => f.name);
  const methods = Map.groupBy(env.functions.filter((f) => f.receiver), (f) => f.name);

  return (parsed) => {
    const issues: CheckIssue[] = [];
    const positions = parsed.sourceInfo?.positions ?? {};
    const at = (e: Expr) => positions[String(e.id)] ?? 0;
    const problem = (e: Expr, message: string): CelT => {
      issues.push({ offset: at(e), message });
      // `dyn` after an error: one mistake is reported once, not again by every caller.
      return T.dyn;
    };

    // A string field with known values compared with a literal outside them never matches.
    const enumCheck = (t: CelT, other: Expr) => {
      const value = literalValue(other);
      if (t.kind === 'string' && t.values && typeof value === 'string' && !t.values.includes(value)) {
        problem(other, `"${value}" can never match: the value is one of ${t.values.map((v) => `"${v}"`).join(', ')}`);
      }
    };

    const call = (e: Expr, fn: string, target: Expr | undefined, args: readonly Expr[], scope: Scope): CelT => {
      const targetType = target && check(target, scope);
      const argTypes = args.map((a) => check(a, scope));
      const declared = (target ? methods : functions).get(fn);
      if (declared === undefined) {
        if (target) return problem(e, `no method "${fn}" (on ${formatType(targetType!)})`);
        if (fn === 'has') return problem(e, 'has() takes a field selection, such as has(identity.acr)');
        return problem(e, `undeclared function "${fn}"`);
      }
      const matches: { decl: FuncDecl; result: CelT }[] = [];
      for (const decl of declared) {
        const bound = new Map<string, CelT>();
        if (decl.args.length !== args.length) continue;
        if (decl.receiver && !unify(decl.receiver, targetType!, bound)) continue;
        if (!decl.args.every((p, i) => unify(p, argTypes[i]!, bound))) continue;
        matches.push({ decl, result: substitute(decl.result, bound) });
      }
      if (matches.length === 0) {
        const shown = `${targetType ? `${formatType(targetType)}.` : ''}(${argTypes.map(formatType).join(', ')})`;
        const hint = fn === '_==_' || fn === '_!=_' ? nullHint(argTypes) : '';
        return problem(e, `no matching overload for "${operatorName(fn)}" applied to ${shown}${hint}`);
      }
      const literals = args.map(literalValue);
      for (const { decl } of matches) {
        const bad = decl.literals?.(literals);
        if (bad) problem(args[bad.arg]!, bad.message);
      }
      if (fn === '_==_' || fn === '_!=_') {
        enumCheck(argTypes[0]!, args[1]!);
        enumCheck(argTypes[1]!, args[0]!);
      }
      if (fn === '@in' && args[1]?.exprKind.case === 'listExpr') {
        for (const element of args[1].exprKind.value.elements) enumCheck(argTypes[0]!, element);
      }
      const first = matches[0]!.result;
      return matches.every((m) => sameType(m.result, first)) ? first : T.dyn;
    };

    const check = (e: Expr, scope: Scope): CelT => {
      const kind = e.exprKind;
      switch (kind.case) {
        case 'constExpr':
          switch (kind.value.constantKind.case) {
            case 'boolValue':
              return T.bool;
            case 'int64Value':
              // The parser keeps any number of digits; CEL's int is 64 bits (langdef.md, "Numeric Values").
              return inRange(kind.value.constantKind.value, INT64) ? T.int : problem(e, 'integer literal out of range for a 64-bit int');
            case 'uint64Value':
              return inRange(kind.value.constantKind.value, UINT64) ? T.uint : problem(e, 'integer literal out of range for a 64-bit uint');
            case 'doubleValue':
              return T.double;
            case 'stringValue':
              return T.string;
            case 'bytesValue':
              return T.bytes;
            case 'nullValue':
              return T.null;
            default:
              return problem(e, `unsupported constant (${String(kind.value.constantKind.case)})`);
          }
        case 'identExpr': {
          const name = kind.value.name;
          const found = lookup(scope, name) ?? own(env.variables, name);
          if (found) return found;
          if (TYPE_NAMES.has(name)) return T.type;
          return problem(e, `undeclared reference to "${name}" (variables: ${Object.keys(env.variables).join(', ')})`);
        }
        case 'selectExpr': {
          const { field, testOnly } = kind.value;
          const operand = check(kind.value.operand!, scope);
          let type: CelT;
          if (operand.kind === 'object') {
            // Own fields only: `request.constructor` or `has(identity.toString)` name no field.
            const decl = own(operand.fields, field);
            if (decl === undefined) {
              return problem(e, `no field "${field}" in ${operand.name} (fields: ${Object.keys(operand.fields).join(', ')})`);
            }
            type = decl.type;
          } else if (operand.kind === 'map' && (operand.key.kind === 'string' || operand.key.kind === 'dyn')) {
            type = operand.value;
          } else if (operand.kind === 'dyn') {
            type = T.dyn;
          } else {
            return problem(e, `${formatType(operand)} has no fields (selecting "${field}")`);
          }
          return testOnly ? T.bool : type;
        }
        case 'callExpr':
          return call(e, kind.value.function, kind.value.target, kind.value.args, scope);
        case 'listExpr': {
          const types = kind.value.elements.map((x) => check(x, scope));
          return T.list(types.reduce<CelT | undefined>((acc, t) => (acc === undefined ? t : (join(acc, t) ?? T.dyn)), undefined) ?? T.dyn);
        }
        case 'structExpr': {
          if (kind.value.messageName !== '') return problem(e, `creating messages (${kind.value.messageName}{…}) is not supported`);
          let key: CelT | undefined;
          let value: CelT | undefined;
          for (const entry of kind.value.entries) {
            if (entry.keyKind.case !== 'mapKey') return problem(e, 'a map literal needs keys');
            const k = check(entry.keyKind.value, scope);
            const v = check(entry.value!, scope);
            key = key === undefined ? k : (join(key, k) ?? T.dyn);
            value = value === undefined ? v : (join(value, v) ?? T.dyn);
          }
          return T.map(key ?? T.dyn, value ?? T.dyn);
        }
        case 'comprehensionExpr': {
          const c = kind.value;
          const range = check(c.iterRange!, scope);
          let iter: CelT;
          if (range.kind === 'list') iter = range.elem;
          else if (range.kind === 'map') iter = range.key;
          else if (range.kind === 'dyn') iter = T.dyn;
          else return problem(c.iterRange!, `cannot iterate over ${formatType(range)} (a list or a map is needed)`);
          const accu = check(c.accuInit!, scope);
          const loop = push(scope, { [c.iterVar]: iter, [c.accuVar]: accu });
          // The macros (all, exists, exists_one, filter) hide their predicate inside the
          // loop step; check it first so a non-bool predicate is named as such rather than
          // as an overload of an operator the author never wrote.
          const predicate = macroPredicate(c.loopStep!, c.accuVar);
          if (predicate !== undefined) {
            const t = check(predicate, loop);
            if (!unify(T.bool, t, new Map())) return problem(predicate, `the predicate must be a bool, this one is ${formatType(t)}`);
          }
          check(c.loopCondition!, loop);
          check(c.loopStep!, loop);
          return check(c.result!, push(scope, { [c.accuVar]: accu }));
        }
        default:
          return problem(e, `unsupported expression (${String(kind.case)})`);
      }
    };

    const type = parsed.expr ? check(parsed.expr, undefined) : T.dyn;
    // A macro's predicate is checked on its own and again inside the loop step.
    const unique = [...new Map(issues.map((i) => [`${i.offset}:${i.message}`, i])).values()];
    return { type, issues: unique };
  };
}

/** all/exists: `@result && p` / `@result || p`; exists_one/filter/map-with-filter: `p ? … : …`. */
function macroPredicate(step: Expr, accuVar: string): Expr | undefined {
  if (step.exprKind.case !== 'callExpr') return undefined;
  const { function: fn, args } = step.exprKind.value;
  const first = args[0];
  if ((fn === '_&&_' || fn === '_||_') && first?.exprKind.case === 'identExpr' && first.exprKind.value.name === accuVar) return args[1];
  if (fn === '_?_:_') return first;
  return undefined;
}

function nullHint(types: readonly CelT[]): string {
  return types.some((t) => t.kind === 'null_type') ? ': an absent field is not null; test it with has(x.field)' : '';
}

const INT64 = [-(2n ** 63n), 2n ** 63n - 1n] as const;
const UINT64 = [0n, 2n ** 64n - 1n] as const;
const inRange = (v: bigint, [min, max]: readonly [bigint, bigint]) => v >= min && v <= max;

/** `table[name]` when it is the table's own entry: never a member of Object.prototype. */
function own<V>(table: Readonly<Record<string, V>>, name: string): V | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}

type Scope = { readonly vars: Readonly<Record<string, CelT>>; readonly parent: Scope } | undefined;

const push = (parent: Scope, vars: Record<string, CelT>): Scope => ({ vars, parent });

function lookup(scope: Scope, name: string): CelT | undefined {
  for (let s = scope; s; s = s.parent) if (Object.hasOwn(s.vars, name)) return s.vars[name];
  return undefined;
}
