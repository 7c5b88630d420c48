import { describe, expect, it } from 'vitest';
import { compileAdminHosts, refuseAdminRequest } from './admin-guard.ts';

const none = compileAdminHosts([]);

function verdict(host: string | undefined, localAddress: string | undefined, extra: Record<string, string> = {}, httpVersion = '1.1') {
  const headers = { ...(host === undefined ? {} : { host }), ...extra };
  const rawHeaders = Object.entries(headers).flat();
  return refuseAdminRequest(none, { headers, rawHeaders, httpVersion, localAddress })?.reason;
}

describe('admin Host rule', () => {
  it('answers the address the socket came in on, as a Host header spells it', () => {
    expect(verdict('10.1.2.3:9090', '10.1.2.3')).toBeUndefined(); // a pod IP: probes and scrapes
    expect(verdict('10.1.2.3:9090', '::ffff:10.1.2.3')).toBeUndefined(); // dual-stack listener
    expect(verdict('[::1]:9090', '::1')).toBeUndefined();
    expect(verdict('[0:0:0:0:0:0:0:1]:9090', '::1')).toBe('host'); // not how the address is written: refused, not guessed at
    expect(verdict('[fd00::5]', 'fd00::5')).toBeUndefined();
    expect(verdict('10.1.2.4:9090', '10.1.2.3')).toBe('host');
  });

  it('answers localhost only when the request came in on a loopback address', () => {
    expect(verdict('localhost:9090', '127.0.0.1')).toBeUndefined();
    expect(verdict('localhost', '::1')).toBeUndefined();
    expect(verdict('localhost', '::ffff:127.0.0.1')).toBeUndefined();
    expect(verdict('localhost:9090', '10.1.2.3')).toBe('host');
    expect(verdict('a.localhost:9090', '127.0.0.1')).toBe('host');
    expect(verdict('localhost:9090', undefined)).toBe('host');
  });

  it('matches configured names case-insensitively, wildcards on subdomains only', () => {
    const hosts = compileAdminHosts(['Prom.Example', '*.mon.example', '[fd00::1]']);
    const check = (host: string) => refuseAdminRequest(hosts, { headers: { host }, rawHeaders: ['Host', host], httpVersion: '1.1', localAddress: '10.0.0.1' })?.reason;
    expect(check('prom.example:9090')).toBeUndefined();
    expect(check('x.mon.example')).toBeUndefined();
    expect(check('[fd00::1]:9090')).toBeUndefined();
    expect(check('mon.example')).toBe('host');
    expect(check('xmon.example')).toBe('host');
    expect(check('prom.example.evil')).toBe('host');
  });

  it('refuses missing (HTTP/1.1), repeated and malformed Host as a bad request', () => {
    expect(verdict(undefined, '127.0.0.1')).toBe('bad_host');
    expect(verdict(undefined, '127.0.0.1', {}, '1.0')).toBeUndefined();
    expect(verdict(undefined, '127.0.0.1', { origin: 'http://127.0.0.1' }, '1.0')).toBe('origin'); // no Host to be the same origin as
    for (const bad of ['127.0.0.1:70000', 'a b', 'user@127.0.0.1', '127.0.0.1/x', '[::g]', '', 'a..b']) expect(verdict(bad, '127.0.0.1'), bad).toBe('bad_host');
  });
});

describe('admin Origin rule', () => {
  const at = (origin: string) => verdict('127.0.0.1:9090', '127.0.0.1', { origin });
  it('answers the request\'s own origin only', () => {
    expect(at('http://127.0.0.1:9090')).toBeUndefined();
    expect(at('HTTP://127.0.0.1:9090')).toBeUndefined();
    expect(at('https://127.0.0.1:9090')).toBeUndefined();
    for (const other of ['http://127.0.0.1', 'http://127.0.0.1:9091', 'http://localhost:9090', 'null', 'http://evil.example', '', 'http://127.0.0.1:9090/']) {
      expect(at(other), other).toBe('origin');
    }
  });

  it('matches default ports', () => {
    expect(verdict('localhost', '127.0.0.1', { origin: 'http://localhost' })).toBeUndefined();
    expect(verdict('localhost', '127.0.0.1', { origin: 'http://localhost:80' })).toBeUndefined();
    expect(verdict('localhost', '127.0.0.1', { origin: 'https://localhost' })).toBeUndefined();
    expect(verdict('localhost', '127.0.0.1', { origin: 'https://localhost:80' })).toBe('origin');
  });

  it('refuses Sec-Fetch-Site other than same-origin and none', () => {
    const site = (value: string) => verdict('127.0.0.1:9090', '127.0.0.1', { 'sec-fetch-site': value });
    expect(site('same-origin')).toBeUndefined();
    expect(site('none')).toBeUndefined();
    expect(site('same-site')).toBe('origin');
    expect(site('cross-site')).toBe('origin');
    expect(site('Cross-Site')).toBe('origin');
  });
});
