import { describe, expect, it } from 'vitest';
import type { CompiledRoute, RequestContext } from './context.ts';
import { canonicalPrefix, createRouteStage, matchRoute, pathHasPrefix, sortRoutes, upstreamPathFor, withoutPathParameters } from './route.ts';
import { compileDenyList } from '../upstream/header-deny-list.ts';
import { BadPathError, RouteNotFoundError } from './errors.ts';

function route(name: string, pathPrefix: string, extra: Partial<CompiledRoute> = {}): CompiledRoute {
  return {
    name,
    hosts: undefined,
    pathPrefix: canonicalPrefix(pathPrefix),
    upstreamOrigin: 'http://up',
    upstreamBasePath: '',
    stripPrefix: false,
    public: false,
    issuers: [],
    timeoutMs: 1000,
    websocket: false,
    deviceBinding: 'optional',
    requireEnrolledDevice: false,
    forwardAuthorization: false,
    denyList: compileDenyList(),
    ...extra,
  };
}

describe('route matching', () => {
  const routes = sortRoutes([
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
