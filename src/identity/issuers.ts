// Issuers compiled from config: who may sign tokens, with which keys and algorithms.
// All key handling is jose's; this module only decides which key set applies.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';

export interface CompiledIssuer extends Pick<IssuerOptions, 'name' | 'issuer' | 'audiences' | 'algorithms' | 'clockToleranceS' | 'groupsClaim' | 'maxTokenLifetimeS'> {
  /** A key resolver for jwtVerify, or the shared secret for HS* issuers. */
  readonly key: JWTVerifyGetKey | Uint8Array;
  /** Present for remote JWKS: lets readiness probe the issuer. */
  readonly remote?: { url: string; reload(): Promise<void>; fresh: boolean };
}

export interface IssuerDeps {
  /** Directory that relative jwksFile paths resolve against (the config file's). */
  readonly configDir: string;
  /** Injected for tests; defaults to the global fetch. */
  readonly fetch?: typeof fetch;
}

function loadJwksFile(file: string): JSONWebKeySet {
  const jwks = JSON.parse(readFileSync(file, 'utf8')) as JSONWebKeySet;
  if (!Array.isArray(jwks.keys)) throw new Error(`${file}: not a JWKS (no "keys" array)`);
  return jwks;
}

/** One trusted token issuer, as the config's `issuers[]` entry describes it (config/schema.ts). */
export interface IssuerOptions {
  readonly name: string;
  readonly issuer: string;
  readonly audiences: readonly string[];
  readonly algorithms: readonly string[];
  /** Skew allowed on nbf, iat and auth_time; exp is honoured to the second (identity/claims.ts). */
  readonly clockToleranceS: number;
  readonly groupsClaim: string;
  /** Longest exp - iat (or exp - now without iat) accepted from this issuer. */
  readonly maxTokenLifetimeS: number;
  /** Exactly one of secret, jwksFile (relative to the config's directory) and jwksUrl. */
  readonly secret?: string;
  readonly jwksFile?: string;
  readonly jwksUrl?: string;
  readonly jwksCacheMaxAgeS: number;
  readonly jwksCooldownS: number;
  readonly jwksTimeoutMs: number;
}

export function compileIssuer(config: IssuerOptions, deps: IssuerDeps): CompiledIssuer {
  const base = {
    name: config.name,
    issuer: config.issuer,
    audiences: Object.freeze([...config.audiences]),
    algorithms: Object.freeze([...config.algorithms]),
    clockToleranceS: config.clockToleranceS,
    groupsClaim: config.groupsClaim,
    maxTokenLifetimeS: config.maxTokenLifetimeS,
  };
  if (config.secret !== undefined) {
    return Object.freeze({ ...base, key: new TextEncoder().encode(config.secret) });
  }
  if (config.jwksFile !== undefined) {
    const jwks = loadJwksFile(resolve(deps.configDir, config.jwksFile));
    return Object.freeze({ ...base, key: createLocalJWKSet(jwks) });
  }
  if (config.jwksUrl !== undefined) {
    // jose refetches on an unknown kid (key rotation) no more often than the cooldown,
    // and at least every cacheMaxAge; both come from config.
    const remote = createRemoteJWKSet(new URL(config.jwksUrl), {
      cooldownDuration: config.jwksCooldownS * 1000,
      cacheMaxAge: config.jwksCacheMaxAgeS * 1000,
      timeoutDuration: config.jwksTimeoutMs,
    });
    return Object.freeze({
      ...base,
      key: remote,
      remote: {
        url: config.jwksUrl,
        reload: () => remote.reload(),
        get fresh() {
          return remote.fresh;
        },
      },
    });
  }
  // The config validator rejects this; keep the compile step honest if it is ever bypassed.
  throw new Error(`issuer ${config.name}: no jwksUrl, jwksFile or secret`);
}
