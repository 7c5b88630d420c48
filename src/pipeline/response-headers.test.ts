import { describe, expect, it } from 'vitest';
import { HOST_WIDE_HEADER_GROUPS } from '../config/schema.ts';
import { compileResponsePolicy, errorResponseHeaders, HOST_WIDE_HEADERS, type HeaderRewrite, type RouteResponseSettings } from './response-headers.ts';
import type { RequestContext } from './context.ts';

const settings = (over: Partial<RouteResponseSettings> = {}): RouteResponseSettings => ({
  banners: 'strip',
  errorBodies: 'replace',
  redirects: 'rewrite',
  cookies: 'scoped',
  ownHostHeaders: [],
  setHeaders: {},
  ...over,
});

const compile = (over: Partial<RouteResponseSettings> = {}, bannerHeaders = ['server', 'X-Powered-By']) =>
  compileResponsePolicy({
    routeName: 'app',
    mapping: { prefix: '/app', strips: true },
    upstream: { origin: 'http://up', basePath: '' },
    response: settings(over),
    bannerHeaders,
    onMalformedCookie: () => {},
  });

describe('compileResponsePolicy', () => {
  it('knows every group the schema offers', () => {
    expect(Object.keys(HOST_WIDE_HEADERS).sort()).toEqual([...HOST_WIDE_HEADER_GROUPS].sort());
  });

  it('drops banners (names in any case), host-wide headers, pinning and hop-by-hop headers by default', () => {
    const { rules, dropPrefix } = compile();
    for (const name of ['server', 'x-powered-by', 'strict-transport-security', 'alt-svc', 'clear-site-data', 'nel', 'report-to', 'reporting-endpoints', 'service-worker-allowed', 'public-key-pins', 'expect-ct', 'transfer-encoding', 'connection']) {
      expect(rules.get(name), name).toBe('drop');
    }
    expect(dropPrefix).toBe('access-control-');
    expect(typeof rules.get('location')).toBe('function');
    expect(typeof rules.get('set-cookie')).toBe('function');
  });

  it('turns each part off on its own', () => {
    const open = compile({ banners: 'pass', redirects: 'pass', cookies: 'pass', errorBodies: 'pass', ownHostHeaders: ['cors', 'strict-transport-security'] });
    expect(open.rules.get('server')).toBeUndefined();
    expect(open.rules.get('location')).toBeUndefined();
    expect(open.rules.get('set-cookie')).toBeUndefined();
    expect(open.rules.get('strict-transport-security')).toBeUndefined();
    expect(open.rules.get('alt-svc')).toBe('drop');
    expect(open.rules.get('public-key-pins')).toBe('drop');
    expect(open.dropPrefix).toBeUndefined();
    expect(open.replaceErrorBodies).toBe(false);
    expect(open.cookieMarker).toBeUndefined();
    expect(compile().cookieMarker).toBe('app.');
  });

  it('drops a name listed both as a banner and for rewriting', () => {
    expect(compile({}, ['set-cookie']).rules.get('set-cookie')).toBe('drop');
  });

  it('sets setHeaders under lower-case names, and refuses names that frame the message or are the gateway\'s', () => {
    expect(compile({ setHeaders: { 'Strict-Transport-Security': 'max-age=1' } }).setHeaders).toEqual({ 'strict-transport-security': 'max-age=1' });
    expect(compile().setHeaders).toBeUndefined();
    for (const name of ['Content-Length', 'transfer-encoding', 'Connection', 'x-request-id', 'Upgrade']) {
      expect(() => compile({ setHeaders: { [name]: '1' } }), name).toThrow(/cannot set/);
    }
  });
});

describe('Location from an upstream with several endpoints', () => {
  const local = { origin: 'http://local:8080', basePath: '' };
  const central = { origin: 'https://central.example.com', basePath: '/orders' };
  const quarantine = { origin: 'http://q:9000', basePath: '' };
  const policy = compileResponsePolicy({
    routeName: 'app',
    mapping: { prefix: '/app', strips: true },
    upstream: local,
    endpoints: { routeUpstream: 'orders', of: new Map([['orders', [local, central]], ['quarantine', [quarantine]]]) },
    response: settings(),
    bannerHeaders: [],
    onMalformedCookie: () => {},
  });
  const rewrite = policy.rules.get('location') as HeaderRewrite;
  const ctx = (over: Partial<RequestContext>) => ({ publicOrigin: 'https://gw', path: '/app/x', ...over }) as RequestContext;

  it('treats every endpoint of the upstream as its own address, whichever answered', () => {
    const fromLocal = ctx({ upstreamOrigin: local.origin, upstreamPath: '/x' });
    expect(rewrite('https://central.example.com/orders/y?z=1', fromLocal)).toBe('https://gw/app/y?z=1');
    expect(rewrite('http://local:8080/y', fromLocal)).toBe('https://gw/app/y');
    const fromCentral = ctx({ upstreamOrigin: central.origin, upstreamPath: '/orders/x' });
    expect(rewrite('http://local:8080/y', fromCentral)).toBe('https://gw/app/y');
    expect(rewrite('/orders/y', fromCentral)).toBe('/app/y'); // path-absolute: the answering endpoint's base path
    expect(rewrite('http://elsewhere/y', fromCentral)).toBe('http://elsewhere/y');
  });

  it('includes the endpoints of the upstream a policy obligation named', () => {
    const toQuarantine = ctx({ upstreamName: 'quarantine', upstreamOrigin: quarantine.origin, upstreamPath: '/x' });
    expect(rewrite('http://q:9000/y', toQuarantine)).toBe('https://gw/app/y');
    expect(rewrite('http://q:9000/y', ctx({ upstreamOrigin: local.origin, upstreamPath: '/x' }))).toBe('http://q:9000/y');
  });
});

describe('errorResponseHeaders', () => {
  const policy = compile();
  it('keeps only a 503\'s Retry-After, as seconds or an HTTP-date', () => {
    expect(errorResponseHeaders(503, { 'retry-after': '120', etag: '"x"' }, policy)).toEqual({ 'retry-after': '120' });
    expect(errorResponseHeaders(503, { 'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT' }, policy)).toEqual({ 'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT' });
    expect(errorResponseHeaders(503, { 'retry-after': 'later' }, policy)).toBeUndefined();
    expect(errorResponseHeaders(500, { 'retry-after': '120' }, policy)).toBeUndefined();
  });
  it('adds the route\'s setHeaders', () => {
    const withSet = compile({ setHeaders: { 'X-Frame-Options': 'DENY' } });
    expect(errorResponseHeaders(502, { 'set-cookie': 'a=1' }, withSet)).toEqual({ 'x-frame-options': 'DENY' });
  });
});
