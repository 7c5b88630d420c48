// A DPoP key whose proofs (RFC 9449 §4.2) are signed synchronously with node:crypto, for tests
// that need thousands of them fast or a key they can enrol by thumbprint before any request.
import { createHash, createPrivateKey, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';

export interface DpopKey {
  /** The key's RFC 7638 thumbprint: what a bound token's cnf.jkt and a device registry name. */
  jkt: string;
  /** A fresh proof (new jti, iat from the key's clock) for `htu` and `method`, with `ath` for `token`. */
  proof(htu: string, token: string, method?: string): string;
}

/** `now` (epoch ms) sets the proofs' iat: a test driving a gateway's injected clock passes the same one. */
export function newDpopKey(now: () => number = Date.now): DpopKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const { crv, kty, x, y } = publicKey.export({ format: 'jwk' });
  const jkt = createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
  const header = Buffer.from(JSON.stringify({ typ: 'dpop+jwt', alg: 'ES256', jwk: { crv, kty, x, y } })).toString('base64url');
  const key: KeyObject = createPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' }));
  return {
    jkt,
    proof(htu, token, method = 'GET') {
      const ath = createHash('sha256').update(token).digest('base64url');
      const claims = Buffer.from(JSON.stringify({ htm: method, htu, iat: Math.floor(now() / 1000), jti: randomUUID(), ath })).toString('base64url');
      const signature = sign('sha256', Buffer.from(`${header}.${claims}`), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url');
      return `${header}.${claims}.${signature}`;
    },
  };
}
