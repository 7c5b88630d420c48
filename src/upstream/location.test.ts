import { describe, expect, it } from 'vitest';
import { publicPathFor, rewriteLocation, underPath, type PathMapping, type UpstreamBase } from './location.ts';

const PUBLIC = 'https://gw.example.com';
const plain: PathMapping = { prefix: '/app', strips: false };
const strips: PathMapping = { prefix: '/app', strips: true };
const root: UpstreamBase = { origin: 'http://10.0.0.5:8080', basePath: '' };
const based: UpstreamBase = { origin: 'http://10.0.0.5:8080', basePath: '/base' };

describe('underPath', () => {
  it('is segment-aware', () => {
    expect(underPath('/base', '/base')).toBe(true);
    expect(underPath('/base/x', '/base')).toBe(true);
    expect(underPath('/basex', '/base')).toBe(false);
    expect(underPath('/x', '')).toBe(true);
    expect(underPath('/x', '/')).toBe(true);
    expect(underPath('x', '')).toBe(false);
  });
});

describe('publicPathFor', () => {
  it('inverts the route stage: base path removed, stripped prefix put back', () => {
    expect(publicPathFor(strips, '/base/x', '/base')).toBe('/app/x');
    expect(publicPathFor(strips, '/base', '/base')).toBe('/app/');
    expect(publicPathFor(strips, '/x', '')).toBe('/app/x');
    expect(publicPathFor(plain, '/base/app/x', '/base')).toBe('/app/x');
    expect(publicPathFor(plain, '/app/x', '')).toBe('/app/x');
  });
  it('has no answer outside the base path', () => {
    expect(publicPathFor(strips, '/other/x', '/base')).toBeUndefined();
    expect(publicPathFor(strips, '/basement', '/base')).toBeUndefined();
  });
});

describe('rewriteLocation', () => {
  const rw = (v: string, mapping = strips, active = based, own = active) => rewriteLocation(v, mapping, PUBLIC, active, own);

  it('maps an absolute URL on the upstream origin under its base path, keeping query and fragment', () => {
    expect(rw('http://10.0.0.5:8080/base/x?q=1#top')).toBe('https://gw.example.com/app/x?q=1#top');
    expect(rw('http://10.0.0.5:8080/base/x?q=1', plain, based)).toBe('https://gw.example.com/x?q=1');
  });
  it('compares origins as URLs do: host case, default port, scheme case', () => {
    const up: UpstreamBase = { origin: 'http://backend.internal', basePath: '' };
    expect(rw('HTTP://Backend.Internal:80/x', strips, up)).toBe('https://gw.example.com/app/x');
    expect(rw('https://backend.internal/x', strips, up)).toBe('https://backend.internal/x'); // another origin
    expect(rw('http://backend.internal:8080/x', strips, up)).toBe('http://backend.internal:8080/x');
  });
  it('takes a scheme-relative reference to be on the upstream scheme', () => {
    expect(rw('//10.0.0.5:8080/base/y')).toBe('https://gw.example.com/app/y');
  });
  it('leaves other hosts, paths outside the base, relative references and junk alone', () => {
    expect(rw('https://idp.example.com/login?next=/x')).toBe('https://idp.example.com/login?next=/x');
    expect(rw('http://10.0.0.5:8080/other')).toBe('http://10.0.0.5:8080/other');
    expect(rw('x/y?z')).toBe('x/y?z');
    expect(rw('?page=2')).toBe('?page=2');
    expect(rw('http://[::1')).toBe('http://[::1');
    expect(rw('mailto:a@b')).toBe('mailto:a@b');
  });
  it('maps a path-absolute reference when the upstream paths differ from the public ones', () => {
    expect(rw('/base/x?q=1')).toBe('/app/x?q=1');
    expect(rw('/x', strips, root)).toBe('/app/x');
    expect(rw('/base/app/x', plain, based)).toBe('/app/x');
    expect(rw('/other', strips, based)).toBe('/other'); // no public path leads there
  });
  it('leaves a path-absolute reference alone when paths are the same on both sides', () => {
    expect(rw('/x', plain, root)).toBe('/x');
    expect(rw('/x', { prefix: '/', strips: false }, root)).toBe('/x');
  });
  it('maps the origin of the upstream a policy sent the request to, and the route\'s own', () => {
    const quarantine: UpstreamBase = { origin: 'http://quarantine:9000', basePath: '/q' };
    expect(rw('http://quarantine:9000/q/x', strips, quarantine, based)).toBe('https://gw.example.com/app/x');
    expect(rw('http://10.0.0.5:8080/base/x', strips, quarantine, based)).toBe('https://gw.example.com/app/x');
    expect(rw('/q/y', strips, quarantine, based)).toBe('/app/y');
  });
  it('drops userinfo with the internal origin', () => {
    expect(rw('http://admin:pw@10.0.0.5:8080/base/x')).toBe('https://gw.example.com/app/x');
  });
});
