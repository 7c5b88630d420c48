import { parse, plan, celEnv, celFunc, CelScalar, mapType, listType, isCelError, run } from '@bufbuild/cel';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
for (const src of ['a +', 'a == "x', 'foo(1,', 'a.b.', '1 + + ', 'x ? y']) {
  try { parse(src); console.log('ok?', src); } catch (e: any) { console.log(JSON.stringify(src), e.constructor.name, e.message, Object.keys(e), e.location?.start); }
}
const p = parse('request.method == "GET" && has(risk.score) && identity.groups.exists(g, g == "x")');
console.log(JSON.stringify(p.sourceInfo, (k, v) => typeof v === 'bigint' ? String(v) : v).slice(0, 400));
const env = celEnv({ variables: { request: mapType(CelScalar.STRING, CelScalar.DYN), risk: CelScalar.DYN }, funcs: [celFunc('twice', [CelScalar.INT], CelScalar.INT, (x) => x * 2n)] });
const ctx = { request: { method: 'GET', time: timestampFromDate(new Date('2024-01-02T03:04:05Z')), headers: { a: 'b' }, groups: ['x'] }, risk: { score: 0.5 } };
for (const src of ['request.method == "GET"', 'request.time.getHours()', 'request.time.getHours("Europe/Berlin")', 'request.nope', 'has(request.nope)', 'risk.score > 0.3', 'twice(3)', 'request.groups.exists(g, g == "x")', 'request.headers.a', 'request.time > timestamp("2020-01-01T00:00:00Z")', 'unbound.x', '1/0', 'request.method.startsWith("G")', 'twice(1.0)', 'request.time - duration("1h")', 'int(request.time)', '"a" in request.groups', 'request.missing || true', 'request.method.matches("^G")', 'size(request.groups)', 'request.headers["a"]']) {
  try {
    const f = plan(env, parse(src));
    const r = f(ctx as any);
    console.log(src, '=>', isCelError(r) ? 'ERR ' + r.message : r);
  } catch (e: any) { console.log(src, 'THROW', e.message); }
}
