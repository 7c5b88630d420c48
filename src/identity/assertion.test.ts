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

describe('the risk claim', () => {
  const withRisk = (id: Identity, score: number, flagged: boolean) =>
    ({ id: 'r1', identity: id, route: { name: 'echo' }, risk: { score, flagged } }) as unknown as RequestContext;

  it('carries flagged and the score floored to 0.1; absent when the request was not scored', async () => {
    const signer = createAssertionSigner({ ...config, reuseS: 0 }, [await generateSigningKey()]);
    const id = identity(t0 / 1000 + 3600);
    expect(decodeJwt(await signer.assertionFor(withRisk(id, 0.937, true), t0)).risk).toEqual({ score: 0.9, flagged: true });
    expect(decodeJwt(await signer.assertionFor(withRisk(id, 0.05, false), t0)).risk).toEqual({ score: 0, flagged: false });
    expect(decodeJwt(await signer.assertionFor(ctx(id), t0))).not.toHaveProperty('risk');
  });

  it('a reused assertion is reused only within the same score band and flag', async () => {
    const signer = createAssertionSigner(config, [await generateSigningKey()]);
    const id = identity(t0 / 1000 + 3600);
    const low = await signer.assertionFor(withRisk(id, 0.12, false), t0);
    expect(await signer.assertionFor(withRisk(id, 0.18, false), t0 + 1)).toBe(low);
    const higher = await signer.assertionFor(withRisk(id, 0.21, false), t0 + 2);
    expect(higher).not.toBe(low);
    expect(decodeJwt(higher).risk).toEqual({ score: 0.2, flagged: false });
    const flagged = await signer.assertionFor(withRisk(id, 0.21, true), t0 + 3);
    expect(decodeJwt(flagged).risk).toEqual({ score: 0.2, flagged: true });
  });
});
