// Warnings about conditions that load but may cost more than they should: matches() over
// what the client sends. A regular expression runs in time linear in its input, but at
// up to 0.4 µs a character (regex.ts), and the client chooses request.path, request.host
// and every header; a string over MATCHES_MAX_INPUT is an error, which an allow rule
// never grants on and a deny rule counts as a match. A pattern computed from request data
// is compiled per distinct value (30–200 µs each). Neither is wrong, so these are
// warnings (`ztgw policy validate` prints them, the gateway logs them), not load errors.
import { children, type Expr } from './ast.ts';
import { MATCHES_MAX_INPUT } from './regex.ts';

export interface Advice {
  /** Offset into the expression text. */
  readonly offset: number;
  readonly message: string;
}

/** request.<field> values the client writes. request.method is one token, request.ip the gateway's. */
const CLIENT_FIELDS = new Set(['path', 'host', 'headers']);

/** The client-controlled field `e` reads (`request.path`), a tainted comprehension variable's name, or undefined. */
function clientSource(e: Expr, tainted: ReadonlySet<string>): string | undefined {
  const k = e.exprKind;
  if (k.case === 'identExpr' && tainted.has(k.value.name)) return k.value.name;
  if (k.case === 'selectExpr' && k.value.operand?.exprKind.case === 'identExpr') {
    const base = k.value.operand.exprKind.value.name;
    if (base === 'request' && !tainted.has(base) && CLIENT_FIELDS.has(k.value.field)) return `request.${k.value.field}`;
  }
  return undefined;
}

/** The first client-controlled source anywhere in `root`'s subtree. */
function taintOf(root: Expr, tainted: ReadonlySet<string>): string | undefined {
  const stack = [root];
  for (let e = stack.pop(); e !== undefined; e = stack.pop()) {
    const found = clientSource(e, tainted);
    if (found !== undefined) return found;
    stack.push(...children(e));
  }
  return undefined;
}

export function adviseOn(root: Expr, at: (e: Expr) => number): Advice[] {
  const out: Advice[] = [];
  // Comprehension variables over client data (`request.headers.exists(k, k.matches(…))`) carry its taint.
  const stack: [Expr, ReadonlySet<string>][] = [[root, new Set()]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [e, tainted] = next;
    const k = e.exprKind;
    if (k.case === 'callExpr' && k.value.function === 'matches' && k.value.target !== undefined) {
      const source = taintOf(k.value.target, tainted);
      if (source !== undefined) {
        const what = source.startsWith('request.') ? source : `"${source}" (from request data)`;
        out.push({
          offset: at(e),
          message:
            `matches() on ${what}, which the client controls: a string over ${MATCHES_MAX_INPUT} characters is an error ` +
            '(a deny or step_up rule then applies, an allow rule does not) and a long one costs up to 0.4 µs a character; ' +
            'prefer startsWith(), endsWith(), contains() or glob() where they say the same',
        });
      }
      const pattern = k.value.args[0];
      if (pattern !== undefined && pattern.exprKind.case !== 'constExpr') {
        out.push({
          offset: at(pattern),
          message: 'the pattern of matches() is computed per request: each distinct value is compiled (30–200 µs) before it is cached; write it as a string literal',
        });
      }
    }
    if (k.case === 'comprehensionExpr') {
      const c = k.value;
      const inner = c.iterRange !== undefined && taintOf(c.iterRange, tainted) !== undefined ? new Set([...tainted, c.iterVar, c.accuVar]) : tainted;
      if (c.iterRange) stack.push([c.iterRange, tainted]);
      if (c.accuInit) stack.push([c.accuInit, tainted]);
      for (const body of [c.loopCondition, c.loopStep, c.result]) if (body) stack.push([body, inner]);
      continue;
    }
    for (const child of children(e)) stack.push([child, tainted]);
  }
  return out.sort((a, b) => a.offset - b.offset);
}
