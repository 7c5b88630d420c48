// Walking a condition without recursion: its source text's bracket nesting, and its
// parsed expression's depth and nodes. The checker, the compiled path and @bufbuild/cel's
// planner and evaluator all recurse over the expression, and @bufbuild/cel's parser
// recurses over the text, so any of them can exhaust the stack on a deep enough condition
// (a RangeError, about 2,000 levels for the checker, 300–500 brackets for the parser
// depending on how deep the caller's stack already is). These measure first, with loops,
// so that a too-deep condition is a plain, reproducible load error.
import type { parse } from '@bufbuild/cel';

export type Expr = NonNullable<ReturnType<typeof parse>['expr']>;

/**
 * The deepest a condition may nest: brackets in its text, levels in its expression tree.
 * The CEL spec asks implementations for at least 12 levels of nesting and 32 terms in an
 * `&&` or `||` chain (which the parser balances into a tree of depth log2 n); cel-go's
 * parser refuses more than 250 levels. 100 is far beyond any policy written by hand, and
 * stays well below what every recursive pass here can take from any caller.
 */
export const MAX_NESTING = 100;

/** The direct sub-expressions of `e`. */
export function children(e: Expr): Expr[] {
  const k = e.exprKind;
  const out: (Expr | undefined)[] = [];
  switch (k.case) {
    case 'selectExpr':
      out.push(k.value.operand);
      break;
    case 'callExpr':
      out.push(k.value.target, ...k.value.args);
      break;
    case 'listExpr':
      out.push(...k.value.elements);
      break;
    case 'structExpr':
      for (const entry of k.value.entries) out.push(entry.keyKind.case === 'mapKey' ? entry.keyKind.value : undefined, entry.value);
      break;
    case 'comprehensionExpr':
      out.push(k.value.iterRange, k.value.accuInit, k.value.loopCondition, k.value.loopStep, k.value.result);
      break;
    default:
      break;
  }
  return out.filter((x): x is Expr => x !== undefined);
}

/** The number of levels of the expression tree (a constant is 1). */
export function depth(root: Expr): number {
  let max = 0;
  const stack: [Expr, number][] = [[root, 1]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [e, d] = next;
    if (d > max) max = d;
    for (const c of children(e)) stack.push([c, d + 1]);
  }
  return max;
}

/**
 * Where the nesting of ( [ { in CEL source text, outside string literals, first goes past
 * `limit`: the offset of that bracket, or undefined. Strings: '…', "…", triple-quoted,
 * with backslash escapes except in raw strings (r"…"). Only a bound for the parser, so an
 * approximation on malformed text is fine.
 */
export function nestedPast(source: string, limit: number): number | undefined {
  let level = 0;
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (c === '"' || c === "'") {
      const raw = i > 0 && (source[i - 1] === 'r' || source[i - 1] === 'R');
      const quote = source.startsWith(c.repeat(3), i) ? c.repeat(3) : c;
      let j = i + quote.length;
      while (j < source.length && !source.startsWith(quote, j)) j += !raw && source[j] === '\\' ? 2 : 1;
      i = j + quote.length - 1;
    } else if (c === '(' || c === '[' || c === '{') {
      if (++level > limit) return i;
    } else if (c === ')' || c === ']' || c === '}') {
      level--;
    }
  }
  return undefined;
}
