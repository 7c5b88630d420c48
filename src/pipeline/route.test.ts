import { describe, expect, it } from 'vitest';
import type { CompiledRoute, RequestContext } from './context.ts';
import { compileRouteTable, createRouteStage, matchRoute, upstreamPathFor, withoutPathParameters } from './route.ts';
import { canonicalPrefix, pathHasPrefix } from '../core/paths.ts';
import { compileDenyList } from '../upstream/header-deny-list.ts';
import { BadPathError, RouteNotFoundError } from '../core/errors.ts';

function route(name: string, pathPrefix: string, extra: Partial<CompiledRoute> = {}): CompiledRoute {
  return {
    name,
    hosts: undefined,
    pathPrefix: canonicalPrefix(pathPrefix),
    upstream: `route:${name}`,
    upstreamOrigin: 'http://up',
    upstreamBasePath: '',
    stripPrefix: false,
    caseInsensitive: false,
    public: false,
    issuers: [],
    timeoutMs: 1000,
    websocket: false,
    deviceBinding: 'optional',
    requireEnrolledDevice: false,
    forwardAuthorization: false,
    denyList: compileDenyList(),
    response: {} as CompiledRoute['response'], // not read by the route stage
    limits: [],
    rateLimiting: true,
    circuitBreaker: true,
    ...extra,
  };
}

describe('route matching', () => {
  const routes = compileRouteTable([
    route('root', '/'),
    route('api', '/api/'),
    route('api-v2', '/api/v2'),
    route('admin-host', '/api/', { hosts: ['admin.example.com'] }),
    route('wild', '/w', { hosts: ['*.example.com'] }),
  ]);
  const name = (host: string, path: string) => matchRoute(routes, host, path)?.name;

  it('prefers the longest prefix', () => {
    expect(name('x', '/api/v2/users')).toBe('api-v2');
    expect(name('x', '/api/v1/users')).toBe('api');
    expect(name('x', '/other')).toBe('root');
  });

  it('matches whole segments only', () => {
    expect(pathHasPrefix('/apix', '/api')).toBe(false);
    expect(pathHasPrefix('/api', '/api')).toBe(true);
    expect(name('x', '/api/v22')).toBe('api');
  });

  it('prefers a host-bound route over an any-host one with the same prefix', () => {
    expect(name('admin.example.com', '/api/x')).toBe('admin-host');
    expect(name('other.example.com', '/api/x')).toBe('api');
  });

  it('matches wildcard hosts on subdomains but not the apex', () => {
    expect(name('a.example.com', '/w/1')).toBe('wild');
    expect(name('a.b.example.com', '/w/1')).toBe('wild');
    expect(name('example.com', '/w/1')).toBe('root');
    expect(name('evilexample.com', '/w/1')).toBe('root');
  });

  it('builds the upstream path from base path and (maybe stripped) prefix', () => {
    expect(upstreamPathFor(route('a', '/api/', { upstreamBasePath: '/base' }), '/api/x')).toBe('/base/api/x');
    expect(upstreamPathFor(route('a', '/api/', { stripPrefix: true }), '/api/x')).toBe('/x');
    expect(upstreamPathFor(route('a', '/api/', { stripPrefix: true }), '/api')).toBe('/');
  });
});

describe('path parameters', () => {
  it('reads a path as a servlet container does', () => {
    expect(withoutPathParameters('/admin;x/secret')).toBe('/admin/secret');
    expect(withoutPathParameters('/;/admin')).toBe('/admin');
    expect(withoutPathParameters('/a;b;c/d;e/')).toBe('/a/d/');
    expect(withoutPathParameters('/;x')).toBe('/');
  });

  const stage = createRouteStage([route('root', '/', { public: true }), route('admin', '/admin/'), route('api', '/api/')]);
  const ctx = (path: string) => ({ host: 'h', path }) as RequestContext;

  it.each(['/admin;x/secret', '/;/admin/x', '/admin;jsessionid=1', '/x;/../admin'.replace('/..', '')])(
    'refuses %s: path parameters would move it to another route',
    (path) => {
      const c = ctx(path);
      if (path === '/x;/admin') {
        // `/x;/admin` is `/x/admin` to Tomcat: same route (root) either way
        stage(c);
        expect(c.route?.name).toBe('root');
        return;
      }
      expect(() => stage(c)).toThrow(BadPathError);
    },
  );

  it('lets path parameters through when the route is the same either way', () => {
    const c = ctx('/api/a;v=1/b');
    stage(c);
    expect(c.route?.name).toBe('api');
    expect(c.upstreamPath).toBe('/api/a;v=1/b');
  });

  it('still answers 404 for an unknown path, and 400 when only the parameters hide a route', () => {
    const only = createRouteStage([route('api', '/api/')]);
    expect(() => only(ctx('/nope;x'))).toThrow(RouteNotFoundError);
    expect(() => only(ctx('/api;x/y'))).toThrow(BadPathError);
  });
});

describe('case in paths', () => {
  const ctx = (path: string, host = 'h') => ({ host, path }) as RequestContext;
  const routed = (stage: ReturnType<typeof createRouteStage>, path: string, host?: string) => {
    const c = ctx(path, host);
    stage(c);
    return { route: c.route?.name, upstreamPath: c.upstreamPath };
  };

  describe('case-sensitive routes (the default)', () => {
    const stage = createRouteStage([route('root', '/', { public: true }), route('echo', '/echo/'), route('api-v2', '/api/v2/'), route('api', '/api/')]);

    it.each(['/ECHO/x', '/Echo', '/ECHO', '/api/V2/x', '/API/x'])(
      'refuses %s: ignoring case, it belongs to another route',
      (path) => expect(() => stage(ctx(path))).toThrow(BadPathError),
    );

    it('lets upper case through where it changes nothing', () => {
      expect(routed(stage, '/echo/ABC')).toEqual({ route: 'echo', upstreamPath: '/echo/ABC' });
      expect(routed(stage, '/Other/X')).toEqual({ route: 'root', upstreamPath: '/Other/X' });
      expect(routed(stage, '/api/v2/Users')).toEqual({ route: 'api-v2', upstreamPath: '/api/v2/Users' });
    });

    it('refuses, rather than answering 404, a path only case keeps from a route', () => {
      const only = createRouteStage([route('echo', '/echo/')]);
      expect(() => only(ctx('/ECHO/x'))).toThrow(BadPathError);
      expect(() => only(ctx('/nope'))).toThrow(RouteNotFoundError);
      expect(() => only(ctx('/NOPE'))).toThrow(RouteNotFoundError);
    });

    it('checks lower-case paths too when a prefix has upper case', () => {
      const upper = createRouteStage([route('root', '/', { public: true }), route('legacy', '/Legacy/')]);
      expect(routed(upper, '/Legacy/x').route).toBe('legacy');
      expect(() => upper(ctx('/legacy/x'))).toThrow(BadPathError);
    });

    it('compares hosts as before: a host-bound route elsewhere does not count', () => {
      const bound = createRouteStage([route('root', '/', { public: true }), route('admin', '/admin/', { hosts: ['admin.example.com'] })]);
      expect(routed(bound, '/ADMIN/x', 'www.example.com').route).toBe('root');
      expect(() => bound(ctx('/ADMIN/x', 'admin.example.com'))).toThrow(BadPathError);
    });
  });

  describe('a caseInsensitive route', () => {
    const stage = createRouteStage([
      route('root', '/', { public: true }),
      route('api', '/api/', { caseInsensitive: true }),
      route('shop', '/Shop/', { caseInsensitive: true, stripPrefix: true }),
    ]);

    it('matches its prefix in any case, and the upstream gets the path as sent', () => {
      expect(routed(stage, '/API/x')).toEqual({ route: 'api', upstreamPath: '/API/x' });
      expect(routed(stage, '/Api/Admin/x')).toEqual({ route: 'api', upstreamPath: '/Api/Admin/x' });
      expect(routed(stage, '/api')).toEqual({ route: 'api', upstreamPath: '/api' });
      expect(routed(stage, '/SHOP/Cart')).toEqual({ route: 'shop', upstreamPath: '/Cart' });
      expect(routed(stage, '/shop/cart')).toEqual({ route: 'shop', upstreamPath: '/cart' });
    });

    it('still matches whole segments only', () => {
      expect(routed(stage, '/APIX').route).toBe('root');
    });

    it('refuses a path that a more specific case-sensitive route would take, ignoring case', () => {
      const mixed = createRouteStage([route('api', '/api/', { caseInsensitive: true }), route('v2', '/api/v2/')]);
      expect(routed(mixed, '/api/v2/x').route).toBe('v2');
      expect(routed(mixed, '/API/x').route).toBe('api');
      expect(() => mixed(ctx('/API/V2/x'))).toThrow(BadPathError);
    });
  });

  it('costs nothing when no prefix has a letter', () => {
    const table = compileRouteTable([route('root', '/')]);
    expect(table.caseBlind).toBe(true);
    expect(routed(createRouteStage([route('root', '/')]), '/ANY/Thing').route).toBe('root');
  });
});
