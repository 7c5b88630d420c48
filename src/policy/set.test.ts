// The index (createIndex) is an optimisation of one definition: the candidates of a
// request are the policies whose scope `applies`, in set order. These tests compare the
// two over random sets large enough that buckets are indexed again inside (a route with
// many policies for other prefixes, hosts or methods), and over random requests.
import { describe, it, expect } from 'vitest';
import { random } from '../../test/helpers/random.ts';
import { applies, compileScope, createIndex, type CompiledPolicy, type RequestKey } from './set.ts';

const ROUTES = ['code', 'payroll', 'wiki', 'ci'];
const HOSTS = ['code.example.com', 'hr.example.com', '*.example.com', '*.corp.example.com', 'a.corp.example.com', '*'];
const PREFIXES = ['/', '/api', '/api/', '/api/repos', '/admin', '/admin/users', '/a'];
const METHODS = ['GET', 'POST', 'DELETE', 'HEAD'];
const REQUEST_HOSTS = ['code.example.com', 'hr.example.com', 'a.corp.example.com', 'b.a.corp.example.com', 'example.com', 'other.org'];
const PATHS = ['/', '/api', '/api/', '/api/repos', '/api/repos/x', '/apis', '/admin', '/admin/users/1', '/administrator', '/a', '/a/b'];

function some<T>(rnd: () => number, xs: readonly T[]): T[] | undefined {
  if (rnd() < 0.5) return undefined;
  const out = xs.filter(() => rnd() < 0.3);
  return out.length > 0 ? out : [xs[Math.floor(rnd() * xs.length)]!];
}

function policies(rnd: () => number, count: number): CompiledPolicy[] {
  return Array.from({ length: count }, (_, order) => {
    // Many policies on one route, as in a large set for a busy service.
    const routes = rnd() < 0.4 ? ['code'] : some(rnd, ROUTES);
    const appliesTo = compileScope({
      ...(routes && { routes }),
      ...(rnd() < 0.5 && { hosts: some(rnd, HOSTS) }),
      ...(rnd() < 0.5 && { pathPrefixes: some(rnd, PREFIXES) }),
      ...(rnd() < 0.4 && { methods: some(rnd, METHODS) }),
    });
    return { name: `p${order}`, file: `p${order}.yaml`, mode: 'enforce', appliesTo, rules: [], order };
  });
}

function request(rnd: () => number): RequestKey {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  return { route: rnd() < 0.9 ? pick(ROUTES) : undefined, host: pick(REQUEST_HOSTS), path: pick(PATHS), method: pick(METHODS) };
}

describe('the candidate index', () => {
  it('finds exactly the policies that apply, in set order, for sets of 5 to 400 policies', () => {
    const rnd = random(7);
    for (const count of [5, 9, 40, 150, 400]) {
      for (let s = 0; s < 5; s++) {
        const set = policies(rnd, count);
        const candidates = createIndex(set);
        for (let r = 0; r < 200; r++) {
          const req = request(rnd);
          const expected = set.filter((p) => applies(p.appliesTo, req)).map((p) => p.name);
          expect(candidates(req).map((p) => p.name), JSON.stringify(req)).toEqual(expected);
        }
      }
    }
  });

  it('lists a policy once when two of its host suffixes or path prefixes match', () => {
    const many = Array.from({ length: 12 }, (_, order) => ({
      name: `p${order}`,
      file: 'p.yaml',
      mode: 'enforce' as const,
      appliesTo: compileScope(order === 0 ? { hosts: ['*.corp.example.com', '*.example.com'], pathPrefixes: ['/api', '/api/repos'] } : { routes: [`r${order}`] }),
      rules: [],
      order,
    }));
    const found = createIndex(many)({ host: 'a.corp.example.com', path: '/api/repos/x', method: 'GET' });
    expect(found.map((p) => p.name)).toEqual(['p0']);
  });
});
