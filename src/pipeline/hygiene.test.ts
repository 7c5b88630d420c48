import type { IncomingHttpHeaders } from 'node:http';
import proxyaddr from 'proxy-addr';
import { describe, expect, it } from 'vitest';
import type { RequestContext } from './context.ts';
import { BadPathError, BadRequestError, PayloadTooLargeError } from './errors.ts';
import { createHygieneStage, normalisePath } from './hygiene.ts';

describe('normalisePath', () => {
  it.each([
    ['/', '/'],
    ['/echo/', '/echo/'],
    ['/echo/a', '/echo/a'],
    ['/v1/file.json', '/v1/file.json'],
    ['/a/...', '/a/...'],
    ['/a/.hidden/..x', '/a/.hidden/..x'],
    ["/a-b_c~d/!$&'()*+,;=:@", "/a-b_c~d/!$&'()*+,;=:@"],
  ])('returns plain path %s unchanged', (raw, want) => {
    const r = normalisePath(raw);
    expect(r).toEqual({ path: want, hadDotSegments: false });
    expect(r.path).toBe(raw);
  });

  it.each([
    ['/echo/./a//b/../c', '/echo/a/c', true],
    ['/ech%6f/x', '/echo/x', false],
    ['/%41%7a%30%2d%5f%7e', '/Az0-_~', false],
    ['/a%c3%a9', '/a%C3%A9', false],
    ['/a%3fb%23c%25', '/a%3Fb%23c%25', false], // reserved characters stay escaped
    ['/a//b', '/a/b', false],
    ['//a', '/a', false],
    ['/a//', '/a/', false],
    ['/a/.', '/a/', true],
    ['/a/b/..', '/a/', true],
    ['/a/..', '/', true],
    ['/./', '/', true],
    ['/a/./b', '/a/b', true],
    ['/a/b/../../c/', '/c/', true],
  ])('normalises %s to %s', (raw, path, hadDotSegments) => {
    expect(normalisePath(raw)).toEqual({ path, hadDotSegments });
  });

  it.each([
    ['', 'empty'],
    ['echo/x', 'relative'],
    ['*', 'asterisk-form'],
    ['http://x/y', 'absolute-form'],
    ['/echo\\..\\x', 'raw backslash'],
    ['/echo/%5c..%5Cx', 'escaped backslash'],
    ['/%00', 'escaped NUL'],
    ['/a\u0000b', 'raw NUL'],
    ['/a\tb', 'raw tab'],
    ['/a\r\nb', 'raw CR LF'],
    ['/a\u007fb', 'raw DEL'],
    ['/a%0d%0aX:1', 'escaped CR LF'],
    ['/a b', 'raw space'],
    ['/a#b', 'raw fragment'],
    ['/caf\u00e9', 'raw non-ASCII'],
    ['/echo/%2e%2e/x', 'escaped dot-dot'],
    ['/echo/%2E%2e/', 'escaped dot-dot, mixed case'],
    ['/echo/%2e/x', 'escaped dot'],
    ['/a.%2E', 'escaped dot inside a segment'],
    ['/echo/..%2f..%2fadmin', 'escaped slash with dots'],
    ['/a%2fb', 'escaped slash'],
    ['/a%2Fb', 'escaped slash, upper case'],
    ['/a%zz', 'non-hex escape'],
    ['/a%4', 'truncated escape'],
    ['/a%', 'lone percent'],
    ['/a%g0', 'half-hex escape'],
    ['/..', 'dot-dot at root'],
    ['/a/../../b', 'dot-dot above root'],
    ['/a/b/../../../c', 'dot-dot above root, deeper'],
  ])('rejects %s (%s)', (raw) => {
    expect(() => normalisePath(raw)).toThrow(BadPathError);
  });

  it('gives a generic message', () => {
    expect(() => normalisePath('/a%2fb')).toThrow('ambiguous request path');
  });
});

const TRUSTED_PROXY = '10.0.0.1';
const CLIENT = '203.0.113.7';
const trust = proxyaddr.compile(['loopback', '10.0.0.0/8']);
const stage = createHygieneStage({ trust, maxBodyBytes: 1000 });

function makeCtx(over: { rawUrl?: string; headers?: IncomingHttpHeaders; rawHeaders?: string[]; peerIp?: string; tls?: boolean } = {}): RequestContext {
  const headers = over.headers ?? { host: 'api.example.com' };
  return {
    id: 'req-1',
    connection: {},
    method: 'GET',
    rawUrl: over.rawUrl ?? '/echo/x?a=1',
    headers,
    rawHeaders: over.rawHeaders ?? Object.entries(headers).flatMap(([k, v]) => [k, String(v)]),
    peerIp: over.peerIp ?? CLIENT,
    tls: over.tls ?? false,
    isUpgrade: false,
    path: '',
    hadDotSegments: false,
    rawPath: '',
    query: '',
    host: '',
    clientIp: '',
    forwardedFor: '',
    forwardedProto: '',
    forwardedHost: '',
  };
}

function run(over: Parameters<typeof makeCtx>[0]): RequestContext {
  const ctx = makeCtx(over);
  void stage(ctx);
  return ctx;
}

describe('hygiene stage: target', () => {
  it('splits and normalises the request target', () => {
    const ctx = run({ rawUrl: '/echo/./a//b?x=/../y' });
    expect(ctx).toMatchObject({ path: '/echo/a/b', hadDotSegments: true, rawPath: '/echo/./a//b', query: '?x=/../y' });
  });

  it('has an empty query when there is none, and keeps a bare "?"', () => {
    expect(run({ rawUrl: '/echo' }).query).toBe('');
    expect(run({ rawUrl: '/echo?' }).query).toBe('?');
  });

  it.each(['http://api.example.com/echo', '*', '', '/echo/%2e%2e/admin?x', '/echo?a#/../admin'])('rejects target %j', (rawUrl) => {
    expect(() => run({ rawUrl })).toThrow(BadPathError);
  });
});

describe('hygiene stage: forwarding headers', () => {
  it('a direct client: its own forwarding headers are ignored and replaced', () => {
    const ctx = run({
      tls: true,
      headers: {
        host: 'api.example.com',
        'x-forwarded-for': '127.0.0.1, 10.0.0.9',
        'x-forwarded-proto': 'http',
        'x-forwarded-host': 'admin.example.com',
      },
    });
    expect(ctx).toMatchObject({
      clientIp: CLIENT,
      forwardedFor: CLIENT,
      forwardedProto: 'https',
      host: 'api.example.com',
      forwardedHost: 'api.example.com',
    });
  });

  it('a trusted proxy: the chain is appended and the client is the first untrusted hop from the right', () => {
    const ctx = run({
      peerIp: TRUSTED_PROXY,
      headers: { host: 'internal:8080', 'x-forwarded-for': `6.6.6.6, ${CLIENT}, 10.0.0.2` },
    });
    expect(ctx.clientIp).toBe(CLIENT);
    expect(ctx.forwardedFor).toBe(`6.6.6.6, ${CLIENT}, 10.0.0.2, ${TRUSTED_PROXY}`);
  });

  it('a trusted proxy without X-Forwarded-For: the peer is the client', () => {
    const ctx = run({ peerIp: TRUSTED_PROXY });
    expect(ctx).toMatchObject({ clientIp: TRUSTED_PROXY, forwardedFor: TRUSTED_PROXY });
  });

  it('an all-trusted chain yields the leftmost hop, as proxy-addr does', () => {
    const ctx = run({ peerIp: '127.0.0.1', headers: { host: 'h', 'x-forwarded-for': '10.1.1.1,10.0.0.2' } });
    expect(ctx.clientIp).toBe('10.1.1.1');
  });

  it('matches proxyaddr() on the same inputs', () => {
    const cases: [string, string | undefined][] = [
      [CLIENT, '1.1.1.1'],
      [TRUSTED_PROXY, '1.1.1.1, 2.2.2.2'],
      [TRUSTED_PROXY, '1.1.1.1, 10.0.0.3'],
      ['::1', ' 1.1.1.1 ,, 10.0.0.3 , '],
      ['::ffff:10.0.0.1', '2001:db8::1'],
    ];
    for (const [peerIp, xff] of cases) {
      const headers: IncomingHttpHeaders = { host: 'h', 'x-forwarded-for': xff };
      const req = { headers, socket: { remoteAddress: peerIp } } as unknown as Parameters<typeof proxyaddr>[0];
      expect(run({ peerIp, headers }).clientIp, `${peerIp} / ${xff}`).toBe(proxyaddr(req, trust));
    }
  });

  it('stops at a hop that is not an IP address, keeping the hop that reported it', () => {
    const ctx = run({ peerIp: TRUSTED_PROXY, headers: { host: 'h', 'x-forwarded-for': 'unknown, 10.0.0.2' } });
    expect(ctx.clientIp).toBe('10.0.0.2');
  });

  it('takes X-Forwarded-Proto and X-Forwarded-Host from a trusted proxy, first value only', () => {
    const ctx = run({
      peerIp: TRUSTED_PROXY,
      headers: {
        host: 'internal:8080',
        'x-forwarded-proto': 'HTTPS, http',
        'x-forwarded-host': 'API.Example.com:8443, internal:8080',
      },
    });
    expect(ctx).toMatchObject({ forwardedProto: 'https', host: 'api.example.com', forwardedHost: 'api.example.com:8443' });
  });

  it('ignores an X-Forwarded-Proto that is not http or https', () => {
    const ctx = run({ peerIp: TRUSTED_PROXY, headers: { host: 'h', 'x-forwarded-proto': 'javascript' } });
    expect(ctx.forwardedProto).toBe('http');
  });
});

describe('hygiene stage: host', () => {
  it.each([
    ['API.Example.COM', 'api.example.com', 'api.example.com'],
    ['api.example.com:8443', 'api.example.com', 'api.example.com:8443'],
    ['api.example.com.', 'api.example.com', 'api.example.com'],
    ['api.example.com.:80', 'api.example.com', 'api.example.com:80'],
    ['127.0.0.1:8080', '127.0.0.1', '127.0.0.1:8080'],
    ['[::1]:8080', '[::1]', '[::1]:8080'],
    ['[2001:DB8::1]', '[2001:db8::1]', '[2001:db8::1]'],
  ])('Host %s → host %s, forwardedHost %s', (value, host, forwardedHost) => {
    expect(run({ headers: { host: value } })).toMatchObject({ host, forwardedHost });
  });

  it.each([
    [undefined, 'missing'],
    ['', 'empty'],
    ['a b', 'space'],
    ['good.com, evil.com', 'multiple values'],
    ['evil@good.com', 'userinfo'],
    ['good.com/x', 'path'],
    ['a..b', 'empty label'],
    ['.a', 'leading dot'],
    ['h:', 'empty port'],
    ['h:99999', 'port out of range'],
    ['h:8a', 'non-numeric port'],
    ['::1', 'unbracketed IPv6'],
    ['[zz::1]', 'bad IPv6 literal'],
    ['[::1].', 'dot after IPv6 literal'],
    ['g%6fod.com', 'escape'],
  ])('rejects Host %j (%s)', (value, _why) => {
    expect(() => run({ headers: value === undefined ? {} : { host: value } })).toThrow(BadRequestError);
  });

  it('rejects a repeated Host line, which Node would silently reduce to the first', () => {
    const headers = { host: 'good.example.com' };
    expect(() => run({ headers, rawHeaders: ['Host', 'good.example.com', 'HOST', 'admin.example.com'] })).toThrow(BadRequestError);
    expect(run({ headers, rawHeaders: ['Host', 'good.example.com', 'X-Host', 'other'] }).host).toBe('good.example.com');
  });

  it('validates X-Forwarded-Host from a trusted proxy the same way', () => {
    expect(() => run({ peerIp: TRUSTED_PROXY, headers: { host: 'h', 'x-forwarded-host': 'evil@good.com' } })).toThrow(
      BadRequestError,
    );
  });
});

describe('hygiene stage: framing', () => {
  const withBody = (extra: IncomingHttpHeaders): RequestContext => run({ headers: { host: 'h', ...extra } });

  it.each(['0', '1000', '0001000'])('accepts Content-Length %s', (cl) => {
    expect(() => withBody({ 'content-length': cl })).not.toThrow();
  });

  it.each(['1001', '99999999999999999999'])('rejects Content-Length %s as too large', (cl) => {
    expect(() => withBody({ 'content-length': cl })).toThrow(PayloadTooLargeError);
  });

  it.each(['-1', '+5', '1.5', '', ' 5', '5, 5', '0x10', '1e3'])('rejects Content-Length %j as malformed', (cl) => {
    expect(() => withBody({ 'content-length': cl })).toThrow(BadRequestError);
  });

  it('rejects Content-Length together with Transfer-Encoding', () => {
    expect(() => withBody({ 'content-length': '5', 'transfer-encoding': 'chunked' })).toThrow(BadRequestError);
  });

  it('accepts Transfer-Encoding alone', () => {
    expect(() => withBody({ 'transfer-encoding': 'chunked' })).not.toThrow();
  });
});
