import { describe, expect, it } from 'vitest';
import type { CompiledRoute } from './context.ts';
import { canonicalPrefix, matchRoute, pathHasPrefix, sortRoutes, upstreamPathFor } from './route.ts';

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
