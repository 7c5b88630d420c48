import { describe, expect, it } from 'vitest';
import { createConcurrencyLimits, isRefusal, principalKey, PRINCIPAL_FULL, UPSTREAM_FULL, type Release } from './concurrency.ts';

const limits = (max?: number, perPrincipal?: number) =>
  createConcurrencyLimits(new Map([['orders', { maxInFlight: max, maxInFlightPerPrincipal: perPrincipal }]]));

function granted(value: ReturnType<ReturnType<typeof limits>['tryAcquire']>): Release {
  if (isRefusal(value)) throw new Error(`refused: ${value.reason}`);
  return value;
}

describe('tryAcquire', () => {
  it('caps a principal while others still get slots', () => {
    const l = limits(10, 2);
    const alice = principalKey('alice', 'laptop');
    granted(l.tryAcquire('orders', alice));
    granted(l.tryAcquire('orders', alice));
    expect(l.tryAcquire('orders', alice)).toBe(PRINCIPAL_FULL);
    expect(l.tryAcquire('orders', principalKey('alice', 'phone'))).not.toBe(PRINCIPAL_FULL); // another device
    expect(l.tryAcquire('orders', principalKey('bob', 'laptop'))).not.toBe(PRINCIPAL_FULL);
    expect(l.inFlight('orders')).toBe(4);
  });

  it('caps the upstream (the bulkhead) before the principal', () => {
    const l = limits(2, 1);
    granted(l.tryAcquire('orders', 'a'));
    granted(l.tryAcquire('orders', undefined));
    expect(l.tryAcquire('orders', 'a')).toBe(UPSTREAM_FULL);
    expect(l.tryAcquire('orders', 'b')).toBe(UPSTREAM_FULL);
    expect(l.tryAcquire('orders', undefined)).toBe(UPSTREAM_FULL);
  });

  it('releases once however often release is called', () => {
    const l = limits(2, 1);
    const first = granted(l.tryAcquire('orders', 'a'));
    const other = granted(l.tryAcquire('orders', 'b'));
    first();
    first();
    first();
    expect(l.inFlight('orders')).toBe(1);
    granted(l.tryAcquire('orders', 'a'));
    expect(l.tryAcquire('orders', 'c')).toBe(UPSTREAM_FULL); // b's slot was not given back by a's extra releases
    other();
    other();
    expect(l.inFlight('orders')).toBe(1);
  });

  it('keeps no memory for principals without a request in flight', () => {
    const l = limits(undefined, 3);
    const releases: Release[] = [];
    for (let i = 0; i < 10_000; i++) releases.push(granted(l.tryAcquire('orders', principalKey(`user-${i}`, `device-${i}`))));
    expect(l.principals('orders')).toBe(10_000);
    for (const release of releases) release();
    expect(l.principals('orders')).toBe(0);
    expect(l.inFlight('orders')).toBe(0);
  });

  it('counts without limits when none are set', () => {
    const l = limits();
    const releases = Array.from({ length: 1000 }, () => granted(l.tryAcquire('orders', 'a')));
    expect(l.inFlight('orders')).toBe(1000);
    for (const r of releases) r();
    expect(l.principals('orders')).toBe(0);
  });

  it('refuses unknown upstreams and nonsense limits', () => {
    expect(() => limits().tryAcquire('nope', 'a')).toThrow(/unknown upstream/);
    expect(() => limits(0)).toThrow(/maxInFlight/);
    expect(() => limits(5, 1.5)).toThrow(/maxInFlightPerPrincipal/);
  });

  it('keeps counters across a reload, so in-flight requests count against the new limits', () => {
    const first = limits(2, 2);
    const held = granted(first.tryAcquire('orders', 'a'));
    granted(first.tryAcquire('orders', 'a'));
    const second = createConcurrencyLimits(new Map([['orders', { maxInFlight: 3, maxInFlightPerPrincipal: 2 }]]), first);
    expect(second.tryAcquire('orders', 'a')).toBe(PRINCIPAL_FULL);
    granted(second.tryAcquire('orders', 'b'));
    expect(second.tryAcquire('orders', 'c')).toBe(UPSTREAM_FULL);
    held(); // released on the old object, seen by the new one
    expect(second.inFlight('orders')).toBe(2);
    granted(second.tryAcquire('orders', 'a'));
  });
});

describe('principalKey', () => {
  it('does not collide whatever the subject holds', () => {
    expect(principalKey('a:b', 'c')).not.toBe(principalKey('a', 'b:c'));
    expect(principalKey('a:b', undefined)).not.toBe(principalKey('a', 'b'));
    expect(principalKey('1:a', undefined)).not.toBe(principalKey('a', undefined));
  });
});
