import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { calculateJwkThumbprint } from 'jose';
import { describe, expect, it } from 'vitest';
import { createDeviceCa } from '../../test/helpers/certs.ts';
import { loadSigningKey } from '../identity/assertion.ts';
import { createDpopVerifier } from '../identity/dpop.ts';
import { createMemoryReplayCache } from '../identity/replay-cache.ts';
import { proofSigner } from './dpop-client.ts';
import { certThumbprint, generateKeyFile, KEY_ALGS, KeyFileError, keyThumbprint, readKeyFile, runKeysCommand, signingAlg } from './keys.ts';

const dir = () => mkdtempSync(join(tmpdir(), 'ztgw-keys-'));

describe('ztgw keys generate', () => {
  it.each(KEY_ALGS)('%s: a private JWK, mode 0600, that the assertion signer loads, named by its thumbprint', async (alg) => {
    const out = join(dir(), 'nested', 'key.jwk');
    const kid = await generateKeyFile(out, alg);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const jwk = JSON.parse(readFileSync(out, 'utf8'));
    expect(jwk).toMatchObject({ alg, kid, use: 'sig', d: expect.any(String) });
    const signing = await loadSigningKey(out);
    expect(signing).toMatchObject({ kid, alg });
    expect(await keyThumbprint(out)).toBe(kid);
  });

  // A key file may be the only copy of a key a device registry or a fleet trusts.
  it('never overwrites an existing file', async () => {
    const out = join(dir(), 'key.jwk');
    writeFileSync(out, 'precious\n');
    await expect(generateKeyFile(out, 'ES256')).rejects.toThrow(KeyFileError);
    await expect(generateKeyFile(out, 'ES256')).rejects.toThrow(/exists; it is not overwritten/);
    expect(readFileSync(out, 'utf8')).toBe('precious\n');
  });

  it('prints the file and thumbprint; refuses an unknown --alg', async () => {
    const out = new PassThrough();
    const file = join(dir(), 'k.jwk');
    await runKeysCommand(['generate', '--out', file], out);
    expect(String(out.read())).toBe(`wrote ${file} (ES256 private JWK, mode 0600); thumbprint ${await keyThumbprint(file)}\n`);
    await expect(runKeysCommand(['generate', '--out', join(dir(), 'x'), '--alg', 'HS256'], out)).rejects.toThrow(/--alg must be one of/);
  });
});

describe('thumbprints', () => {
  it('of a key: the RFC 7638 thumbprint of its public part, from a private JWK, a public JWK or PEM', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const expected = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }) as never);
    const d = dir();
    const files = {
      'private.jwk': JSON.stringify(privateKey.export({ format: 'jwk' })),
      'public.jwk': JSON.stringify(publicKey.export({ format: 'jwk' })),
      'private.pem': privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
      'public.pem': publicKey.export({ format: 'pem', type: 'spki' }) as string,
    };
    for (const [name, text] of Object.entries(files)) {
      writeFileSync(join(d, name), text);
      expect(await keyThumbprint(join(d, name)), name).toBe(expected);
    }
    expect(readKeyFile(join(d, 'public.pem')).privateJwk).toBeUndefined();
  });

  it('refuses what is not a key, and a symmetric key', async () => {
    const d = dir();
    writeFileSync(join(d, 'junk'), 'hello');
    writeFileSync(join(d, 'oct.jwk'), JSON.stringify({ kty: 'oct', k: 'AAAA' }));
    await expect(keyThumbprint(join(d, 'junk'))).rejects.toThrow(/not a usable JWK or PEM key/);
    await expect(keyThumbprint(join(d, 'oct.jwk'))).rejects.toThrow(/symmetric/);
    await expect(keyThumbprint(join(d, 'missing'))).rejects.toThrow(/cannot read \(ENOENT\)/);
  });

  it("of a certificate: x5t#S256, as the gateway computes it from the TLS session", () => {
    const ca = createDeviceCa();
    const device = ca.issue('laptop-7');
    const file = join(dir(), 'device.pem');
    writeFileSync(file, device.certPem);
    expect(certThumbprint(file)).toBe(device.thumbprint);
    writeFileSync(file, device.keyPem);
    expect(() => certThumbprint(file)).toThrow(/not a PEM certificate/);
  });
});

// The thumbprint the CLI enrolls and binds a token to must be the key the gateway's DPoP
// verifier accepts proofs from: `ztgw dpop curl`'s proofs, signed with a generated key file,
// verify against it, and against no other key.
describe('a generated key signs DPoP proofs the gateway accepts', () => {
  it.each(KEY_ALGS)('%s', async (alg) => {
    const file = join(dir(), 'device.jwk');
    const jkt = await generateKeyFile(file, alg);
    expect(signingAlg(readKeyFile(file))).toBe(alg);
    const prove = await proofSigner(file);
    const htu = 'http://127.0.0.1:8080/payroll/';
    const verifier = createDpopVerifier({ algorithms: [...KEY_ALGS], maxAgeS: 60, futureSkewS: 5, replay: createMemoryReplayCache({ maxEntries: 1000 }) });
    const input = { method: 'GET', htu, accessToken: 'the-token', expectedJkt: jkt };
    await expect(verifier.verify({ ...input, proof: await prove(htu, 'GET', 'the-token') })).resolves.toMatchObject({ jkt });
    const other = await generateKeyFile(join(dir(), 'other.jwk'), alg);
    await expect(verifier.verify({ ...input, expectedJkt: other, proof: await prove(htu, 'GET', 'the-token') })).rejects.toMatchObject({ reason: 'jkt_mismatch' });
  });

  it('a public key file cannot sign', async () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const file = join(dir(), 'public.pem');
    writeFileSync(file, publicKey.export({ format: 'pem', type: 'spki' }) as string);
    await expect(proofSigner(file)).rejects.toThrow(/holds no private key/);
  });
});
