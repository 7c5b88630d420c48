import { describe, expect, it } from 'vitest';
import { compileTiers, periodMs } from './tiers.ts';

describe('periodMs', () => {
  it('reads seconds, minutes and hours', () => {
    expect([periodMs('10s'), periodMs('1m'), periodMs('2h')]).toEqual([10_000, 60_000, 7_200_000]);
  });

  it.each(['', '10', 's', '0s', '-1m', '1d', '1.5s'])('refuses %j', (bad) => {
    expect(() => periodMs(bad)).toThrow(RangeError);
  });
});

describe('compileTiers', () => {
  const tiers = compileTiers({
    keyPrefix: 'p:',
    tiers: {
      five: { limit: 5, per: '10s', key: ['subject'], onStoreFailure: 'local' },
      tenant: { limit: 100, per: '1h', burst: 10, key: ['claim:tenant', 'route'], onStoreFailure: 'deny' },
    },
  });

  it('derives each tier\'s GCRA figures: 5 per 10 s is one every 2 s, burst defaulting to the limit', () => {
    expect(tiers.get('five')!.tier).toMatchObject({ name: 'five', limit: 5, periodMs: 10_000, burst: 5, intervalUs: 2_000_000, onStoreFailure: 'local' });
    expect(tiers.get('tenant')!.tier).toMatchObject({ burst: 10, onStoreFailure: 'deny' });
  });

  it('lists the claims a key reads, and builds keys under the prefix with the first dimension as the hash tag', () => {
    const tenant = tiers.get('tenant')!;
    expect(tenant.claims).toEqual(['tenant']);
    const a = tenant.key({ route: 'orders', claims: { tenant: 'acme' } })!;
    const b = tenant.key({ route: 'orders', claims: { tenant: 'globex' } })!;
    expect(a).toMatch(/^p:\{[\w-]{22}\}:tenant:/);
    expect(a).not.toBe(b);
    expect(a).not.toContain('acme'); // values are digests
  });
});
