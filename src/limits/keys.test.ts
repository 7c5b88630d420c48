import { describe, expect, it } from 'vitest';
import { createKeyBuilder, digestValue } from './keys.ts';
import { hashTagOf } from './store.ts';

const values = { subject: 'alice', device: 'dev-1', route: 'orders', ip: '10.0.0.7', claims: { tenant: 'acme', org: 'eng' } };

describe('rate-limit keys', () => {
  it('lays a key out as prefix{tag}:tier:dimensions:values, the tag being the first dimension', () => {
    const key = createKeyBuilder({ tier: 'per-user', keyBy: ['subject', 'device'] })(values);
    expect(key).toBe(`ztgw:rl:{${digestValue('alice')}}:per-user:subject+device:${digestValue('dev-1')}`);
    expect(hashTagOf(key!)).toBe(digestValue('alice'));
  });

  it('orders dimensions subject, device, claim, ip, route whatever the config order', () => {
    const a = createKeyBuilder({ tier: 't', keyBy: ['route', 'ip', 'claim:tenant', 'device'] })(values);
    const b = createKeyBuilder({ tier: 't', keyBy: ['device', 'claim:tenant', 'ip', 'route'] })(values);
    expect(a).toBe(b);
    expect(a).toContain(':t:device+claim.tenant+ip+route:');
    expect(hashTagOf(a!)).toBe(digestValue('dev-1'));
    // Claims among themselves by name.
    const c = createKeyBuilder({ tier: 't', keyBy: ['claim:tenant', 'claim:org'] })(values);
    expect(c).toBe(`ztgw:rl:{${digestValue('eng')}}:t:claim.org+claim.tenant:${digestValue('acme')}`);
  });

  it('puts every subject-keyed tier of a request on one slot', () => {
    const tiers = [
      createKeyBuilder({ tier: 'a', keyBy: ['subject'] }),
      createKeyBuilder({ tier: 'b', keyBy: ['route', 'subject'] }),
      createKeyBuilder({ tier: 'c', keyBy: ['ip', 'subject', 'claim:org'] }),
    ];
    const tags = new Set(tiers.map((t) => hashTagOf(t(values)!)));
    expect(tags.size).toBe(1);
  });

  it('bounds the key whatever the value: a 10 KB subject makes a key as long as a short one', () => {
    const build = createKeyBuilder({ tier: 'per-user', keyBy: ['subject', 'ip'] });
    const short = build({ subject: 'a', ip: '1' })!;
    const long = build({ subject: 'x'.repeat(10_240), ip: '2'.repeat(10_240) })!;
    expect(long.length).toBe(short.length);
    expect(long.length).toBeLessThan(100);
  });

  it('values with :, { or } neither collide nor break the tag', () => {
    const build = createKeyBuilder({ tier: 't', keyBy: ['subject', 'route'] });
    const k1 = build({ subject: 'a:b', route: 'c' })!;
    const k2 = build({ subject: 'a', route: 'b:c' })!;
    const k3 = build({ subject: '}{evil}', route: 'x' })!;
    expect(new Set([k1, k2, k3]).size).toBe(3);
    for (const k of [k1, k2, k3]) {
      expect(k.match(/[{}]/g)).toEqual(['{', '}']);
      expect(k).toMatch(/^ztgw:rl:\{[A-Za-z0-9_-]{22}\}:t:subject\+route:[A-Za-z0-9_-]{22}$/);
    }
    // The subject's tag does not depend on the other dimensions.
    expect(hashTagOf(k3)).toBe(digestValue('}{evil}'));
  });

  it('keeps plain tier and claim names readable and hashes the others behind ~', () => {
    expect(createKeyBuilder({ tier: 'per-user.v2', keyBy: ['ip'] })(values)).toContain(':per-user.v2:ip');
    const odd = createKeyBuilder({ tier: 'a:b{c}', keyBy: ['claim:x:y'] })({ claims: { 'x:y': 'v' } })!;
    expect(odd).toBe(`ztgw:rl:{${digestValue('v')}}:~${digestValue('a:b{c}')}:claim.~${digestValue('x:y')}`);
  });

  it('keeps tiers apart: the same values under different tiers or dimensions are different keys', () => {
    const keys = [
      createKeyBuilder({ tier: 'a', keyBy: ['subject'] })(values),
      createKeyBuilder({ tier: 'b', keyBy: ['subject'] })(values),
      createKeyBuilder({ tier: 'a', keyBy: ['device'] })({ device: 'alice' }),
      createKeyBuilder({ tier: 'a', keyBy: ['subject', 'ip'] })(values),
    ];
    expect(new Set(keys).size).toBe(4);
  });

  it('answers undefined when the request lacks a dimension', () => {
    const build = createKeyBuilder({ tier: 't', keyBy: ['subject', 'device', 'claim:tenant'] });
    expect(build({ subject: 'a', device: 'd' })).toBeUndefined();
    expect(build({ subject: 'a', claims: { tenant: 'x' } })).toBeUndefined();
    expect(build({ device: 'd', claims: { tenant: 'x' } })).toBeUndefined();
    // Only own properties count as claims.
    expect(build({ subject: 'a', device: 'd', claims: Object.create({ tenant: 'inherited' }) as Record<string, string> })).toBeUndefined();
    expect(build({ subject: 'a', device: 'd', claims: { tenant: '' } })).toBeDefined();
  });

  it('takes a configurable prefix without braces', () => {
    expect(createKeyBuilder({ prefix: 'acme:rl:', tier: 't', keyBy: ['ip'] })(values)).toMatch(/^acme:rl:\{/);
    expect(() => createKeyBuilder({ prefix: 'x{y}:', tier: 't', keyBy: ['ip'] })).toThrow(RangeError);
  });

  it('refuses an empty, repeated or unknown dimension list', () => {
    expect(() => createKeyBuilder({ tier: 't', keyBy: [] })).toThrow(/at least one/);
    expect(() => createKeyBuilder({ tier: 't', keyBy: ['ip', 'ip'] })).toThrow(/twice/);
    expect(() => createKeyBuilder({ tier: 't', keyBy: ['host' as 'ip'] })).toThrow(/unknown/);
    expect(() => createKeyBuilder({ tier: 't', keyBy: ['claim:'] })).toThrow(/unknown/);
  });
});

describe('hashTagOf', () => {
  it('follows Redis Cluster: the first {...} if non-empty, else the whole key', () => {
    expect(hashTagOf('a{b}c{d}')).toBe('b');
    expect(hashTagOf('a{}b{c}')).toBe('a{}b{c}');
    expect(hashTagOf('a{b')).toBe('a{b');
    expect(hashTagOf('abc')).toBe('abc');
  });
});
