import { describe, expect, it } from 'vitest';
import { generateKeyPairSync, sign } from 'node:crypto';
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

  // r||s is turned into DER for node:crypto; r or s with a leading zero byte (1 in 256) or
  // the top bit set (1 in 2) encode differently in DER, so sign until both have been seen.
  it('accepts ES256 signatures whatever the shape of r and s, and refuses DER where JWS wants r||s', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const key = importVerificationKey(publicKey.export({ format: 'jwk' }) as Record<string, unknown>, 'ES256');
    const signingInput = `${Buffer.from('{"alg":"ES256"}').toString('base64url')}.${Buffer.from(payload).toString('base64url')}`;
    const seen = { leadingZero: 0, topBit: 0 };
    for (let i = 0; i < 5_000 && (seen.leadingZero < 2 || seen.topBit < 2); i++) {
      const rs = sign('sha256', Buffer.from(signingInput), { key: privateKey, dsaEncoding: 'ieee-p1363' });
      for (const half of [rs.subarray(0, 32), rs.subarray(32)]) {
        if (half[0] === 0) seen.leadingZero++;
        if (half[0]! >= 0x80) seen.topBit++;
      }
      expect(await verifyCompactSignature(`${signingInput}.${rs.toString('base64url')}`, key)).toBe(true);
    }
    expect(seen.leadingZero).toBeGreaterThanOrEqual(2);
    expect(seen.topBit).toBeGreaterThanOrEqual(2);
    const der = sign('sha256', Buffer.from(signingInput), privateKey);
    expect(await verifyCompactSignature(`${signingInput}.${der.toString('base64url')}`, key)).toBe(false);
  });

  it('refuses a key that cannot serve the algorithm', async () => {
    const p384 = await exportJWK((await generateKeyPair('ES384', { extractable: true })).publicKey);
    expect(() => importVerificationKey(p384 as Record<string, unknown>, 'ES256')).toThrow(/curve/);
    const ed = await exportJWK((await generateKeyPair('Ed25519', { extractable: true })).publicKey);
    expect(() => importVerificationKey(ed as Record<string, unknown>, 'RS256')).toThrow(/rsa/);
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    expect(() => importVerificationKey(small as Record<string, unknown>, 'RS256')).toThrow(/2048/);
  });
});
