import { describe, expect, it } from 'vitest';
import type { Identity } from '../pipeline/context.ts';
import { createTokenCache } from './token-cache.ts';

const identity = (expiresAt: number | undefined): Identity => ({
  subject: 'alice',
  issuer: 'iss',
  issuerName: 'corp',
  groups: [],
  claims: {},
  expiresAt,
});

describe('verified-token cache', () => {
  const t0 = 1_800_000_000_000;

  it('returns a cached identity until the token expires, not after', () => {
    const cache = createTokenCache({ maxEntries: 10, maxTtlS: 3600 });
    cache.set('tok', identity(t0 / 1000 + 60), t0);
    expect(cache.get('tok', t0 + 59_999)?.subject).toBe('alice');
    expect(cache.get('tok', t0 + 60_000)).toBeUndefined();
  });

  it('never keeps an entry longer than maxTtl, even for a long-lived token', () => {
    const cache = createTokenCache({ maxEntries: 10, maxTtlS: 5 });
    cache.set('tok', identity(t0 / 1000 + 3600), t0);
    expect(cache.get('tok', t0 + 4_000)).toBeDefined();
    expect(cache.get('tok', t0 + 5_000)).toBeUndefined();
  });

  it('is bounded in entries', () => {
    const cache = createTokenCache({ maxEntries: 2, maxTtlS: 60 });
    for (const t of ['a', 'b', 'c']) cache.set(t, identity(t0 / 1000 + 60), t0);
    expect(cache.get('a', t0)).toBeUndefined();
    expect(cache.get('c', t0)).toBeDefined();
  });

  it('caches nothing when maxEntries is 0', () => {
    const cache = createTokenCache({ maxEntries: 0, maxTtlS: 60 });
    cache.set('tok', identity(t0 / 1000 + 60), t0);
    expect(cache.get('tok', t0)).toBeUndefined();
  });

  it('answers a keep-alive connection’s repeat token from its memo, with the same expiry', () => {
    const cache = createTokenCache({ maxEntries: 10, maxTtlS: 3600 });
    const socket = {};
    cache.set('tok', identity(t0 / 1000 + 60), t0, socket);
    expect(cache.get('tok', t0 + 1_000, socket)?.subject).toBe('alice');
    expect(cache.get('other', t0 + 1_000, socket)).toBeUndefined();
    expect(cache.get('tok', t0 + 60_000, socket)).toBeUndefined();
  });

  it('does not answer another connection from a connection memo when the shared cache is empty', () => {
    const cache = createTokenCache({ maxEntries: 1, maxTtlS: 3600 });
    const a = {};
    cache.set('tok', identity(t0 / 1000 + 60), t0, a);
    cache.set('evicts-tok', identity(t0 / 1000 + 60), t0);
    expect(cache.get('tok', t0, {})).toBeUndefined();
  });
});
