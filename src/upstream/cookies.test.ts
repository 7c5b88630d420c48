import { describe, expect, it } from 'vitest';
import { scopedCookieHeader, scopeSetCookie, type CookieScope } from './cookies.ts';

const scope = (over: Partial<CookieScope> = {}): CookieScope => ({ marker: 'app.', mapping: { prefix: '/app', strips: true }, domain: undefined, ...over });

describe('scopeSetCookie', () => {
  it('marks the name and confines Path to the route prefix', () => {
    expect(scopeSetCookie('sid=abc; Path=/; HttpOnly', scope(), '')).toBe('app.sid=abc; HttpOnly; Path=/app');
    expect(scopeSetCookie('sid=abc', scope(), '')).toBe('app.sid=abc; Path=/app');
  });
  it('maps a Path under the upstream base path to its public path', () => {
    expect(scopeSetCookie('a=1; Path=/base/sub', scope(), '/base')).toBe('app.a=1; Path=/app/sub');
    expect(scopeSetCookie('a=1; Path=/sub', scope(), '')).toBe('app.a=1; Path=/app/sub');
    // Not stripped: the public path is the upstream's, kept when under the prefix.
    expect(scopeSetCookie('a=1; Path=/app/sub', scope({ mapping: { prefix: '/app', strips: false } }), '')).toBe('app.a=1; Path=/app/sub');
  });
  it('puts a Path outside the route, outside the base, relative or empty at the route prefix', () => {
    const notStripped = scope({ mapping: { prefix: '/app', strips: false } });
    expect(scopeSetCookie('a=1; Path=/', notStripped, '')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Path=/other', notStripped, '')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Path=/elsewhere', scope(), '/base')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Path=rel', scope(), '')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Path=', scope(), '')).toBe('app.a=1; Path=/app');
  });
  it('reads attribute names in any case, the last Path and Domain counting, and keeps the others as written', () => {
    expect(scopeSetCookie('a=1; pAtH=/x; SECURE; sameSite=Lax; PATH=/y; Max-Age=60', scope(), '')).toBe('app.a=1; SECURE; sameSite=Lax; Max-Age=60; Path=/app/y');
    expect(scopeSetCookie('a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; DOMAIN=.example.com', scope(), '')).toBe('app.a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/app');
  });
  it('drops Domain unless it is the configured cookieDomain or under it', () => {
    const withDomain = scope({ domain: 'example.com' });
    expect(scopeSetCookie('a=1; Domain=.example.com', withDomain, '')).toBe('app.a=1; Domain=.example.com; Path=/app');
    expect(scopeSetCookie('a=1; Domain=App.Example.com', withDomain, '')).toBe('app.a=1; Domain=App.Example.com; Path=/app');
    expect(scopeSetCookie('a=1; Domain=evil.com', withDomain, '')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Domain=notexample.com', withDomain, '')).toBe('app.a=1; Path=/app');
    expect(scopeSetCookie('a=1; Domain=example.com', scope(), '')).toBe('app.a=1; Path=/app');
  });
  it('keeps __Host- and __Secure- at the front of the name; a __Host- cookie keeps Path=/ and no Domain', () => {
    expect(scopeSetCookie('__Host-sid=1; Secure; Path=/; Domain=example.com', scope({ domain: 'example.com' }), '')).toBe('__Host-app.sid=1; Secure; Path=/');
    expect(scopeSetCookie('__HOST-sid=1; Secure', scope(), '')).toBe('__HOST-app.sid=1; Secure; Path=/');
    expect(scopeSetCookie('__Secure-sid=1; Secure; Path=/', scope(), '')).toBe('__Secure-app.sid=1; Secure; Path=/app');
  });
  it('keeps quoted values byte for byte', () => {
    expect(scopeSetCookie('q="hello world"; Path=/', scope(), '')).toBe('app.q="hello world"; Path=/app');
    expect(scopeSetCookie('q="a=b"', scope(), '')).toBe('app.q="a=b"; Path=/app');
    expect(scopeSetCookie(' spaced = v ', scope(), '')).toBe('app.spaced=v; Path=/app');
  });
  it('drops what browsers would read otherwise or not at all', () => {
    expect(scopeSetCookie('novalue', scope(), '')).toEqual({ malformed: 'no "=" in the name-value pair' });
    expect(scopeSetCookie('=v; Path=/', scope(), '')).toEqual({ malformed: 'empty name' });
    expect(scopeSetCookie(' \t=v', scope(), '')).toEqual({ malformed: 'empty name' });
    expect(scopeSetCookie('a=1\u0000; Path=/', scope(), '')).toEqual({ malformed: 'control character' });
    expect(scopeSetCookie('a=1; Path=/\u0001x', scope(), '')).toEqual({ malformed: 'control character' });
    expect(scopeSetCookie('a=1\u007f', scope(), '')).toEqual({ malformed: 'control character' });
  });
});

describe('scopedCookieHeader', () => {
  it('keeps only the route\'s cookies, marker removed, in order', () => {
    expect(scopedCookieHeader('app.sid=1; other.sid=2; sid=3; app.theme=dark', 'app.')).toBe('sid=1; theme=dark');
  });
  it('restores __Host- and __Secure- names', () => {
    expect(scopedCookieHeader('__Host-app.sid=1;__Secure-app.t=2; __Host-other.sid=3', 'app.')).toBe('__Host-sid=1; __Secure-t=2');
  });
  it('is undefined when none are the route\'s', () => {
    expect(scopedCookieHeader('other.sid=2; sid=3; nameless', 'app.')).toBeUndefined();
    expect(scopedCookieHeader('', 'app.')).toBeUndefined();
  });
  it('never matches a route whose name merely starts the same', () => {
    expect(scopedCookieHeader('apps.sid=1; app-x.sid=2; appsid=3', 'app.')).toBeUndefined();
  });
  it('keeps values as sent, quotes and "=" included; drops a marker without a name', () => {
    expect(scopedCookieHeader('app.q="hello world"; app.b=x=y; app.=z', 'app.')).toBe('q="hello world"; b=x=y');
  });
});
