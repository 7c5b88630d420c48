import { describe, expect, it } from 'vitest';
import { generateKeyPairSync } from 'node:crypto';
import { CompactSign, exportJWK, generateKeyPair } from 'jose';
import { importVerificationKey, verifyCompactSignature } from './jws-signature.ts';

const payload = new TextEncoder().encode('{"htm":"GET"}');

describe('JWS signature check (node:crypto)', () => {
  for (const alg of ['ES256', 'ES384', 'ES512', 'RS256', 'PS256', 'PS512', 'EdDSA', 'Ed25519'] as const) {
    it(`accepts what jose signs with ${alg}, and nothing tampered`, async () => {
      const { publicKey, privateKey } = await generateKeyPair(alg === 'EdDSA' ? 'Ed25519' : alg, { extractable: true });
      const jws = await new CompactSign(payload).setProtectedHeader({ alg }).sign(privateKey);
      const key = importVerificationKey((await exportJWK(publicKey)) as Record<string, unknown>, alg);
      expect(await verifyCompactSignature(jws, key)).toBe(true);
      const [h, p, sig] = jws.split('.');
      const otherPayload = Buffer.from('{"htm":"POST"}').toString('base64url');
      expect(await verifyCompactSignature(`${h}.${otherPayload}.${sig}`, key)).toBe(false);
      expect(await verifyCompactSignature(`${h}.${p}.${sig!.slice(0, -4)}AAAA`, key)).toBe(false);
      expect(await verifyCompactSignature(`${h}.${p}.`, key)).toBe(false);
    });
  }

  it('refuses a key that cannot serve the algorithm', async () => {
    const p384 = await exportJWK((await generateKeyPair('ES384', { extractable: true })).publicKey);
    expect(() => importVerificationKey(p384 as Record<string, unknown>, 'ES256')).toThrow(/curve/);
    const ed = await exportJWK((await generateKeyPair('Ed25519', { extractable: true })).publicKey);
    expect(() => importVerificationKey(ed as Record<string, unknown>, 'RS256')).toThrow(/rsa/);
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    expect(() => importVerificationKey(small as Record<string, unknown>, 'RS256')).toThrow(/2048/);
  });
});
