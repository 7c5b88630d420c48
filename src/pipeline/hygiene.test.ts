import type { IncomingHttpHeaders } from 'node:http';
import proxyaddr from 'proxy-addr';
import { describe, expect, it } from 'vitest';
import type { RequestContext } from './context.ts';
import { BadPathError, BadRequestError, MisdirectedRequestError, PayloadTooLargeError } from '../core/errors.ts';
import { compileAuthorities, createHygieneStage, normalisePath, originFor } from './hygiene.ts';

describe('normalisePath', () => {
  it.each([
    ['/', '/'],
    ['/echo/', '/echo/'],
    ['/echo/a', '/echo/a'],
    ['/v1/file.json', '/v1/file.json'],
    ['/a/...', '/a/...'],
    ['/a/.hidden/..x', '/a/.hidden/..x'],
    ['/.well-known/x', '/.well-known/x'],
    ['/a/x../b', '/a/x../b'],
    ['/a/...;x', '/a/...;x'],
    ['/a;..', '/a;..'], // a parameter of `a`, not a segment
    ["/a-b_c~d/!$&'()*+,;=:@", "/a-b_c~d/!$&'()*+,;=:@"],
  ])('returns plain path %s unchanged', (raw, want) => {
    const r = normalisePath(raw);
    expect(r).toBe(want);
    expect(r).toBe(raw);
  });

  it.each([
    ['/ech%6f/x', '/echo/x'],
    ['/%41%7a%30%2d%5f%7e', '/Az0-_~'],
    ['/a%c3%a9', '/a%C3%A9'],
    ['/a%3fb%23c', '/a%3Fb%23c'], // reserved characters stay escaped
    ['/a//b', '/a/b'],
    ['//a', '/a'],
    ['/a//', '/a/'],
    ['/a/{x}', '/a/%7Bx%7D'],
    ['/a"<>^`|', '/a%22%3C%3E%5E%60%7C'],
  ])('normalises %s to %s', (raw, path) => {
    expect(normalisePath(raw)).toBe(path);
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
    ['/a%252e%252e/x', 'double-escaped dot'],
    ['/a%252E', 'double-escaped dot, upper case'],
    ['/a%252f', 'double-escaped slash'],
    ['/a%252F', 'double-escaped slash, upper case'],
    ['/a%255c', 'double-escaped backslash'],
    ['/a%255C', 'double-escaped backslash, upper case'],
    ['/a%25252e', 'triple-escaped dot'],
    ['/a%2500', 'double-escaped NUL'],
    ['/a%c0%ae%c0%ae/x', 'overlong UTF-8 dot'],
    ['/a%C0%AF', 'overlong UTF-8 slash'],
    ['/a%e0%80%ae', 'three-byte overlong dot'],
    ['/a%ed%a0%80', 'UTF-8 surrogate'],
    ['/a%ff', 'stray byte'],
    ['/a%c3', 'truncated UTF-8'],
    ['/a%u002e%u002e/x', 'IIS %u escape'],
    ['/a%zz', 'non-hex escape'],
    ['/a%4', 'truncated escape'],
    ['/a%', 'lone percent'],
    ['/a%g0', 'half-hex escape'],
    ['/..', 'dot-dot at root'],
    ['/.', 'dot at root'],
    ['/./', 'dot segment with slash'],
    ['/a/.', 'trailing dot segment'],
    ['/a/..', 'trailing dot-dot segment'],
    ['/a/./b', 'dot segment inside a route'],
    ['/echo/a/../b', 'dot-dot staying inside a route'],
    ['/a/../../b', 'dot-dot above root'],
    ['/a//..//b', 'dot-dot between duplicate slashes'],
    ['/a/..;/b', 'dot-dot with an empty path parameter'],
    ['/a/..;jsessionid=x/b', 'dot-dot with a path parameter'],
    ['/a/.;/b', 'dot with a path parameter'],
    ['/a/..%3b/b', 'dot-dot with an escaped semicolon'],
    ['/a/.%3B/b', 'dot with an escaped semicolon'],
    ['/a/..%20/b', 'dot-dot padded with an escaped space'],
    ['/a/.%20%20', 'dot padded with escaped spaces'],
    ['/a%2f..', 'escaped slash before dot-dot'],
  ])('rejects %j (%s)', (raw) => {
    expect(() => normalisePath(raw)).toThrow(BadPathError);
  });

  it('gives a generic message', () => {
    expect(() => normalisePath('/a%2fb')).toThrow('ambiguous request path');
  });

  // Whatever passes is a fixed point: normalising it again changes nothing, and it holds no
  // dot segment by any reading (so the upstream cannot resolve one the gateway did not see).
  it('is idempotent and leaves no dot segment, on random and adversarial paths', () => {
    const atoms = ['/', '//', '.', '..', '...', ';', ';x=1', '%2e', '%2E', '%2f', '%25', '%252e', '%c0%ae', '%C3%A9', '%u002e', '%3b', '%20', 'a', 'Z', '~', '-', '_', '\\', '{', '|', '"', '%41', '%7e', '%00', '%ff', '*', ':', '@', '!', "'", '$', '&', '+', ',', '=', '%', '%g', '\u00e9', '\t', '#', 'x..', '..x', '.well-known'];
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let accepted = 0;
    for (let i = 0; i < 20_000; i++) {
      let raw = '/';
      const n = 1 + rand(12);
      for (let j = 0; j < n; j++) raw += atoms[rand(atoms.length)];
      let out: string;
      try {
        out = normalisePath(raw);
      } catch (err) {
        expect(err, raw).toBeInstanceOf(BadPathError);
        continue;
      }
      accepted++;
      expect(normalisePath(out), raw).toBe(out);
      const decoded = decodeURIComponent(out); // never throws on an accepted path
      for (const seg of decoded.split('/')) {
        const name = seg.split(';')[0]!.trimEnd();
        expect(name === '.' || name === '..', `${raw} → ${out}`).toBe(false);
      }
      expect(new URL(`http://h${out}`).pathname, raw).toBe(out); // what the proxy's URL parser sends
    }
    expect(accepted).toBeGreaterThan(1000);
  });

  it('survives huge paths and many segments', () => {
    expect(normalisePath('/a'.repeat(20_000))).toHaveLength(40_000);
    expect(normalisePath('/' + 'x'.repeat(100_000))).toHaveLength(100_001);
    expect(() => normalisePath('/a'.repeat(10_000) + '/..')).toThrow(BadPathError);
    expect(normalisePath('/%41'.repeat(10_000))).toBe('/A'.repeat(10_000));
  });
});

const TRUSTED_PROXY = '10.0.0.1';
const CLIENT = '203.0.113.7';
const trust = proxyaddr.compile(['loopback', '10.0.0.0/8']);
// The hosts these tests address: route hosts on default ports, other ports by publicOrigins.
const authorities = compileAuthorities(
  ['https://api.example.com:8443', 'http://internal:8080', 'http://127.0.0.1:8080', 'http://[::1]:8080', 'https://api.example.com'],
  ['api.example.com', 'h', 'good.example.com', '[2001:db8::1]'],
);
const stage = createHygieneStage({ trust, maxBodyBytes: 1000, authorities, headersWithUnderscores: 'drop' });

type Over = {
  rawUrl?: string;
  headers?: IncomingHttpHeaders;
  rawHeaders?: string[];
  peerIp?: string;
  tls?: boolean;
  localAddress?: string;
  localPort?: number;
  httpVersion?: string;
};

function makeCtx(over: Over = {}): RequestContext {
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
    localAddress: over.localAddress ?? '10.9.9.9',
    localPort: over.localPort ?? 443,
    isUpgrade: false,
    httpVersion: over.httpVersion ?? '1.1',
    path: '',
    rawPath: '',
    query: '',
    host: '',
    clientIp: '',
    forwardedFor: '',
    forwardedProto: '',
    forwardedHost: '',
    publicOrigin: '',
    connectionListed: undefined,
  };
}

function run(over: Over, s = stage): RequestContext {
  const ctx = makeCtx(over);
  void s(ctx);
  return ctx;
}

describe('hygiene stage: target', () => {
  it('splits and normalises the request target', () => {
    const ctx = run({ rawUrl: '/echo/%61//b?x=/../y' });
    expect(ctx).toMatchObject({ path: '/echo/a/b', rawPath: '/echo/%61//b', query: '?x=/../y' });
  });

  it('has an empty query when there is none, and keeps a bare "?"', () => {
    expect(run({ rawUrl: '/echo' }).query).toBe('');
    expect(run({ rawUrl: '/echo?' }).query).toBe('?');
  });

  it.each(['http://api.example.com/echo', '*', '', '/echo/%2e%2e/admin?x', '/echo?a#/../admin', '/echo/../x?y', '/echo/..;/x'])('rejects target %j', (rawUrl) => {
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
    ['api.example.com.', 'api.example.com', 'api.example.com'],
    ['api.example.com.:80', 'api.example.com', 'api.example.com'],
    ['api.example.com:080', 'api.example.com', 'api.example.com'],
    ['127.0.0.1:8080', '127.0.0.1', '127.0.0.1:8080'],
    ['[::1]:8080', '[::1]', '[::1]:8080'],
    ['[2001:DB8::1]', '[2001:db8::1]', '[2001:db8::1]'],
  ])('Host %s → host %s, forwardedHost %s', (value, host, forwardedHost) => {
    expect(run({ headers: { host: value } })).toMatchObject({ host, forwardedHost, publicOrigin: `http://${forwardedHost}` });
  });

  it.each([
    ['evil.example.com', 'not configured'],
    ['api.example.com:8443', 'a route host on another port (http: only https is configured there)'],
    ['api.example.com:9999', 'a route host on another port'],
    ['internal', 'a configured origin on the wrong port'],
    ['127.0.0.2:8080', 'another loopback address'],
    ['localhost:8080', 'localhost, with publicOrigins configured'],
  ])('refuses Host %s with 421 (%s)', (value) => {
    expect(() => run({ headers: { host: value } })).toThrow(MisdirectedRequestError);
  });

  it('an https origin is matched on the TLS listener, not on plain HTTP', () => {
    expect(run({ tls: true, headers: { host: 'api.example.com:8443' } })).toMatchObject({ publicOrigin: 'https://api.example.com:8443', forwardedHost: 'api.example.com:8443' });
    expect(() => run({ headers: { host: 'api.example.com:8443' } })).toThrow(MisdirectedRequestError);
  });

  it('a trusted proxy may name a configured origin, not any host', () => {
    expect(run({ peerIp: TRUSTED_PROXY, headers: { host: 'x', 'x-forwarded-host': 'api.example.com:8443', 'x-forwarded-proto': 'https' } }).publicOrigin).toBe('https://api.example.com:8443');
    expect(() => run({ peerIp: TRUSTED_PROXY, headers: { host: 'api.example.com', 'x-forwarded-host': 'evil.example.com' } })).toThrow(MisdirectedRequestError);
  });

  describe('without publicOrigins: the address the client connected to', () => {
    const local = createHygieneStage({ trust, maxBodyBytes: 1000, authorities: compileAuthorities([], ['api.example.com']), headersWithUnderscores: 'drop' });
    it.each([
      ['127.0.0.1', 8080, '127.0.0.1:8080', 'http://127.0.0.1:8080'],
      ['127.0.0.1', 8080, 'localhost:8080', 'http://localhost:8080'],
      ['127.0.0.1', 8080, '[::1]:8080', 'http://[::1]:8080'],
      ['::1', 8080, '[::1]:8080', 'http://[::1]:8080'],
      ['::ffff:127.0.0.1', 8080, 'localhost:8080', 'http://localhost:8080'],
      ['10.1.2.3', 8080, '10.1.2.3:8080', 'http://10.1.2.3:8080'],
      ['10.1.2.3', 80, '10.1.2.3', 'http://10.1.2.3'],
      ['10.1.2.3', 8080, 'api.example.com', 'http://api.example.com'],
    ])('local %s:%d, Host %s → %s', (localAddress, localPort, host, origin) => {
      expect(run({ localAddress, localPort, headers: { host } }, local).publicOrigin).toBe(origin);
    });
    it.each([
      ['127.0.0.1', 8080, '127.0.0.1:9999'],
      ['127.0.0.1', 8080, '127.0.0.1'],
      ['127.0.0.1', 8080, 'evil.example.com:8080'],
      ['10.1.2.3', 8080, 'localhost:8080'],
      ['10.1.2.3', 8080, '10.1.2.4:8080'],
      ['10.1.2.3', 8080, 'gw.example.com:8080'],
    ])('local %s:%d refuses Host %s', (localAddress, localPort, host) => {
      expect(() => run({ localAddress, localPort, headers: { host } }, local)).toThrow(MisdirectedRequestError);
    });
    it('behind a trusted proxy, its X-Forwarded-Host is not compared with our socket', () => {
      expect(() => run({ peerIp: TRUSTED_PROXY, localAddress: '10.1.2.3', localPort: 8080, headers: { host: '10.1.2.3:8080', 'x-forwarded-host': '10.1.2.3:8080' } }, local)).toThrow(MisdirectedRequestError);
    });
  });

  it('originFor drops default ports and matches wildcard route hosts on subdomains only', () => {
    const a = compileAuthorities(['HTTPS://GW.example.com:443'], ['*.corp.example']);
    expect(originFor(a, 'https', 'gw.example.com', undefined, undefined)).toBe('https://gw.example.com');
    expect(originFor(a, 'https', 'gw.example.com', '443', undefined)).toBe('https://gw.example.com');
    expect(originFor(a, 'http', 'gw.example.com', undefined, undefined)).toBeUndefined();
    expect(originFor(a, 'https', 'a.corp.example', undefined, undefined)).toBe('https://a.corp.example');
    expect(originFor(a, 'https', 'corp.example', undefined, undefined)).toBeUndefined();
    expect(originFor(a, 'https', 'a.corp.example', '8443', undefined)).toBeUndefined();
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

describe('hygiene stage: header names and Connection', () => {
  it('records the names the client listed in Connection, lower-cased', () => {
    expect(run({ headers: { host: 'h', connection: 'keep-alive, X-Tenant ,x-b' } }).connectionListed).toEqual(new Set(['keep-alive', 'x-tenant', 'x-b']));
    expect(run({ headers: { host: 'h', connection: 'keep-alive' } }).connectionListed).toBeUndefined();
  });

  it("in 'reject' mode refuses any header name with an underscore; in 'drop' mode lets the deny list drop it", () => {
    const strict = createHygieneStage({ trust, maxBodyBytes: 1000, authorities, headersWithUnderscores: 'reject' });
    for (const name of ['x_zt_assertion', 'x_remote_user', 'authorization_', '_']) {
      expect(() => run({ headers: { host: 'h', [name]: 'v' } }, strict)).toThrow(BadRequestError);
      expect(() => run({ headers: { host: 'h', [name]: 'v' } })).not.toThrow();
    }
    expect(() => run({ headers: { host: 'h', 'x-tenant': 'a' } }, strict)).not.toThrow();
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

  it('rejects Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1), accepts 1.0 without it', () => {
    expect(() => run({ httpVersion: '1.0', headers: { host: 'h', 'transfer-encoding': 'chunked' } })).toThrow(BadRequestError);
    expect(() => run({ httpVersion: '1.0', headers: { host: 'h' } })).not.toThrow();
  });

  it.each(['gzip, chunked', 'identity, chunked', 'gzip'])('rejects Transfer-Encoding %j: only chunked is understood', (te) => {
    expect(() => withBody({ 'transfer-encoding': te })).toThrow(BadRequestError);
  });

  it.each(['2.0', '0.9', '1.2'])('rejects HTTP/%s request lines (Node reads "HTTP/2.0" as 1.x)', (httpVersion) => {
    expect(() => run({ httpVersion, headers: { host: 'h' } })).toThrow(BadRequestError);
  });
});
