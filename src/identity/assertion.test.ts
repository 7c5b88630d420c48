import { describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import type { Identity, RequestContext } from '../pipeline/context.ts';
import { createAssertionSigner, generateSigningKey } from './assertion.ts';

const t0 = 1_800_000_000_000;
const config = { header: 'x-zt-assertion', issuer: 'zt-gateway', lifetimeS: 60, reuseS: 30, signingKeys: [] };

const identity = (expiresAt: number | undefined): Identity =>
  Object.freeze({ subject: 'alice', issuer: 'https://idp', issuerName: 'idp', groups: [], claims: {}, expiresAt });
const ctx = (id: Identity) => ({ id: 'r1', identity: id, route: { name: 'echo' } }) as unknown as RequestContext;

describe('identity assertion lifetime', () => {
  it('expires with the token when the token has less than lifetimeS left', async () => {
    const signer = createAssertionSigner(config, [await generateSigningKey()]);
    const id = identity(t0 / 1000 + 20);
    const jwt = await signer.assertionFor(ctx(id), t0);
    const { exp, iat } = decodeJwt(jwt);
    expect(iat).toBe(t0 / 1000);
    expect(exp).toBe(t0 / 1000 + 20);
  });

  it('keeps lifetimeS for a long-lived token, and never rounds up past a fractional token exp', async () => {
    const signer = createAssertionSigner({ ...config, reuseS: 0 }, [await generateSigningKey()]);
    expect(decodeJwt(await signer.assertionFor(ctx(identity(t0 / 1000 + 3600)), t0)).exp).toBe(t0 / 1000 + 60);
    expect(decodeJwt(await signer.assertionFor(ctx(identity(t0 / 1000 + 10.9)), t0)).exp).toBe(t0 / 1000 + 10);
  });

  it('reuses an assertion only until the token expires, never after', async () => {
    const signer = createAssertionSigner(config, [await generateSigningKey()]);
    const id = identity(t0 / 1000 + 10);
    const first = await signer.assertionFor(ctx(id), t0);
    expect(await signer.assertionFor(ctx(id), t0 + 9_999)).toBe(first); // reuse inside the window
    const after = await signer.assertionFor(ctx(id), t0 + 10_000);
    expect(after).not.toBe(first);
    // Without the cap the first one (signed for reuseS = 30 s) would still be handed out here.
    expect(decodeJwt(after).exp).toBeLessThanOrEqual(t0 / 1000 + 10);
  });
});
