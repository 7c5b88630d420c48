// Verified-token cache: a repeat request with the same token skips signature verification.
// Keyed by a hash of the token so the cache never holds bearer credentials; an entry never
// outlives the token's exp nor the configured maximum (bounding how long a revoked key's
// tokens stay accepted).
import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Identity } from '../pipeline/context.ts';

export interface TokenCache {
  get(token: string, nowMs: number): Identity | undefined;
  set(token: string, identity: Identity, nowMs: number): void;
}

interface Entry {
  identity: Identity;
  expiresAtMs: number;
}

export function tokenKey(token: string): string {
  return hash('sha256', token, 'base64url'); // one-shot: no Hash object per request
}

export function createTokenCache(opts: { maxEntries: number; maxTtlS: number }): TokenCache {
  if (opts.maxEntries === 0) return { get: () => undefined, set: () => {} };
  const lru = new LRUCache<string, Entry>({ max: opts.maxEntries });
  const maxTtlMs = opts.maxTtlS * 1000;
  return {
    get(token, nowMs) {
      const key = tokenKey(token);
      const entry = lru.get(key);
      if (entry === undefined) return undefined;
      if (nowMs >= entry.expiresAtMs) {
        lru.delete(key);
        return undefined;
      }
      return entry.identity;
    },
    set(token, identity, nowMs) {
      const expMs = identity.expiresAt === undefined ? Infinity : identity.expiresAt * 1000;
      const expiresAtMs = Math.min(expMs, nowMs + maxTtlMs);
      if (expiresAtMs > nowMs) lru.set(tokenKey(token), { identity, expiresAtMs });
    },
  };
}
