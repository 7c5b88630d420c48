import { describe, expect, it } from 'vitest';
import { SignJWT } from 'jose';
import { compileIssuer } from '../identity/issuers.ts';
import { createTokenCache } from '../identity/token-cache.ts';
import { createAuthnStage } from './authn.ts';
import type { CompiledRoute, RequestContext } from './context.ts';
import { BadRequestError, InvalidTokenError, MissingTokenError } from '../core/errors.ts';

const secret = 's'.repeat(40);
const issuer = compileIssuer(
  {
    name: 'corp',
    issuer: 'https://idp',
    audiences: ['gw'],
    algorithms: ['HS256'],
    secret,
    clockToleranceS: 30,
    groupsClaim: 'groups',
    maxTokenLifetimeS: 3600,
    jwksCacheMaxAgeS: 600,
    jwksCooldownS: 30,
    jwksTimeoutMs: 5000,
  },
  { configDir: '.' },
);
const t0 = 1_800_000_000_000;
const stage = createAuthnStage({
  issuers: new Map([[issuer.issuer, issuer]]),
  cache: createTokenCache({ maxEntries: 100, maxTtlS: 300 }),
  dpopAlgorithms: ['ES256', 'EdDSA'],
  now: () => t0,
});

const route = (over: Partial<CompiledRoute> = {}) => ({ name: 'r', public: false, issuers: ['corp'], deviceBinding: 'optional', ...over }) as CompiledRoute;
const ctx = (rawHeaders: string[], r = route()): RequestContext => {
  const headers: Record<string, string> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) headers[rawHeaders[i]!.toLowerCase()] ??= rawHeaders[i + 1]!;
  return { id: 'req', headers, rawHeaders, route: r, connection: {} } as unknown as RequestContext;
};
const sign = (claims: Record<string, unknown>) =>
  new SignJWT({ iss: 'https://idp', aud: 'gw', sub: 'alice', iat: t0 / 1000, exp: t0 / 1000 + 60, ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(secret));

async function outcome(c: RequestContext): Promise<unknown> {
  try {
    await stage(c);
    return undefined;
  } catch (err) {
    return err;
  }
}

describe('authn stage', () => {
  it('accepts one Authorization header and refuses a second one, whatever its case, even on a public route', async () => {
    const token = await sign({});
    expect(await outcome(ctx(['Authorization', `Bearer ${token}`]))).toBeUndefined();
    for (const second of ['Authorization', 'authorization', 'AUTHORIZATION']) {
      expect(await outcome(ctx(['Authorization', `Bearer ${token}`, second, `Bearer ${token}`]))).toBeInstanceOf(BadRequestError);
      expect(await outcome(ctx(['Authorization', `Bearer ${token}`, second, 'x'], route({ public: true })))).toBeInstanceOf(BadRequestError);
    }
  });

  it('refuses a token whose claims have the wrong type, as invalid_token', async () => {
    const err = await outcome(ctx(['Authorization', `Bearer ${await sign({ auth_time: 1e20 })}`]));
    expect(err).toBeInstanceOf(InvalidTokenError);
    expect((err as Error).message).toMatch(/auth_time/);
  });

  it('offers the DPoP challenge with the configured algs on a route that requires binding', async () => {
    const bound = route({ deviceBinding: 'required' });
    const missing = (await outcome(ctx([], bound))) as MissingTokenError;
    expect(missing).toBeInstanceOf(MissingTokenError);
    expect(missing.headers?.['www-authenticate']).toBe('Bearer realm="zt-gateway", DPoP realm="zt-gateway", algs="ES256 EdDSA"');
    const invalid = (await outcome(ctx(['Authorization', `Bearer ${await sign({ sub: '' })}`], bound))) as InvalidTokenError;
    expect(invalid).toBeInstanceOf(InvalidTokenError);
    expect(invalid.headers?.['www-authenticate']).toMatch(/^Bearer realm="zt-gateway", error="invalid_token".*, DPoP realm="zt-gateway", algs="ES256 EdDSA"$/);
    // Elsewhere the static Bearer challenge of the problem table applies.
    expect(((await outcome(ctx([]))) as MissingTokenError).headers).toBeUndefined();
  });
});
