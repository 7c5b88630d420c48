// Verified-token cache: a repeat request with the same token skips signature verification.
// Keyed by a hash of the token so the cache never holds bearer credentials; an entry never
// outlives the token's exp nor the configured maximum (bounding how long a revoked key's
// tokens stay accepted).
import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Identity } from '../core/domain.ts';

export interface TokenCache {
  /** `connection` (the client socket) lets a keep-alive client's repeat token skip the hash. */
  get(token: string, nowMs: number, connection?: object): Identity | undefined;
  set(token: string, identity: Identity, nowMs: number, connection?: object): void;
}

interface Entry {
  identity: Identity;
  expiresAtMs: number;
}

interface ConnectionEntry extends Entry {
  token: string;
}

export function tokenKey(token: string): string {
  return hash('sha256', token, 'base64url'); // one-shot: no Hash object per request
}

export function createTokenCache(opts: { maxEntries: number; maxTtlS: number }): TokenCache {
  if (opts.maxEntries === 0) return { get: () => undefined, set: () => {} };
  const lru = new LRUCache<string, Entry>({ max: opts.maxEntries });
  // A client on a keep-alive connection sends the same token request after request; comparing
  // it with the last one seen on that socket costs less than hashing it (~2 µs, 2% of the
  // request path). The entry dies with the socket and obeys the same expiry as the LRU's.
  const byConnection = new WeakMap<object, ConnectionEntry>();
  const maxTtlMs = opts.maxTtlS * 1000;
  return {
    get(token, nowMs, connection) {
      const last = connection === undefined ? undefined : byConnection.get(connection);
      if (last !== undefined && last.token === token && nowMs < last.expiresAtMs) return last.identity;
      const key = tokenKey(token);
      const entry = lru.get(key);
      if (entry === undefined) return undefined;
      if (nowMs >= entry.expiresAtMs) {
        lru.delete(key);
        return undefined;
      }
      if (connection !== undefined) byConnection.set(connection, { token, ...entry });
      return entry.identity;
    },
    set(token, identity, nowMs, connection) {
      const expMs = identity.expiresAt === undefined ? Infinity : identity.expiresAt * 1000;
      const expiresAtMs = Math.min(expMs, nowMs + maxTtlMs);
      if (expiresAtMs <= nowMs) return;
      lru.set(tokenKey(token), { identity, expiresAtMs });
      if (connection !== undefined) byConnection.set(connection, { token, identity, expiresAtMs });
    },
  };
}
