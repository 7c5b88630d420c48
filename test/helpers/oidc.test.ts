import { generateKeyPair } from 'dpop';
import { calculateJwkThumbprint, createRemoteJWKSet, decodeProtectedHeader, exportJWK, jwtVerify, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDeviceCa, type DeviceCa } from './certs.ts';
import { startOidcProvider, type OidcProvider } from './oidc.ts';

let idp: OidcProvider;
let ca: DeviceCa;
let jwks: ReturnType<typeof createRemoteJWKSet>;

beforeAll(async () => {
  const t0 = performance.now();
  idp = await startOidcProvider();
  const startupMs = performance.now() - t0;
  expect(startupMs).toBeLessThan(2000);
  ca = createDeviceCa();
  jwks = createRemoteJWKSet(new URL(idp.jwksUrl));
});

afterAll(async () => {
  await idp?.close();
});

async function verify(token: string, audience = 'zt-gateway'): Promise<JWTPayload> {
  expect(token.split('.')).toHaveLength(3);
  const header = decodeProtectedHeader(token);
  expect(header).toMatchObject({ alg: 'ES256', typ: 'at+jwt' });
  expect(header.kid).toEqual(expect.any(String));
  const { payload } = await jwtVerify(token, jwks, {
    issuer: idp.issuer,
    audience,
    algorithms: ['ES256'],
    typ: 'at+jwt',
  });
  return payload;
}

describe('startOidcProvider', () => {
  it('serves a discovery document pointing at its own jwks_uri and token endpoints', async () => {
    expect(idp.issuer).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${idp.issuer}/.well-known/openid-configuration`);
    expect(res.status).toBe(200);
    const doc = (await res.json()) as Record<string, unknown>;
    expect(doc.issuer).toBe(idp.issuer);
    expect(doc.jwks_uri).toBe(idp.jwksUrl);
    expect(doc.token_endpoint).toBe(`${idp.issuer}/token`);
    expect(doc.grant_types_supported).toContain('client_credentials');
    expect(doc.dpop_signing_alg_values_supported).toContain('ES256');
    expect(doc.tls_client_certificate_bound_access_tokens).toBe(true);
    expect(doc.token_endpoint_auth_methods_supported).toContain('self_signed_tls_client_auth');
    expect((doc.mtls_endpoint_aliases as { token_endpoint: string }).token_endpoint).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/token$/);

    const keys = (await (await fetch(idp.jwksUrl)).json()) as { keys: Array<Record<string, unknown>> };
    expect(keys.keys).toHaveLength(1);
    expect(keys.keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    expect(keys.keys[0]).not.toHaveProperty('d');
  });

  it('issues plain bearer JWTs without cnf; sub defaults to the client id', async () => {
    const payload = await verify(await idp.bearerToken());
    expect(payload.cnf).toBeUndefined();
    expect(payload.sub).toBe('zt-test-client');
    expect(payload.client_id).toBe('zt-test-client');
    expect(payload.exp! - payload.iat!).toBe(600);
    expect(payload.jti).toEqual(expect.any(String));

    const alice = await verify(await idp.bearerToken({ sub: 'alice' }));
    expect(alice.sub).toBe('alice');
    expect(alice.cnf).toBeUndefined();
  });

  it('issues DPoP-bound JWTs whose cnf.jkt is the key thumbprint', async () => {
    const keyPair = await generateKeyPair('ES256');
    const payload = await verify(await idp.dpopBoundToken(keyPair, { sub: 'bob' }));
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256');
    expect(payload.cnf).toEqual({ jkt });
    expect(payload.sub).toBe('bob');

    // A different key gets a different binding.
    const other = await generateKeyPair('ES256');
    const payload2 = await verify(await idp.dpopBoundToken(other));
    expect((payload2.cnf as { jkt: string }).jkt).not.toBe(jkt);
    expect(payload2.sub).toBe('zt-test-client');
  });

  it('issues certificate-bound JWTs whose cnf["x5t#S256"] is the certificate thumbprint', async () => {
    const device = ca.issue('laptop-42');
    const payload = await verify(await idp.certBoundToken(device.certPem, device.keyPem, { sub: 'carol' }));
    expect(payload.cnf).toEqual({ 'x5t#S256': device.thumbprint });
    expect(payload.sub).toBe('carol');

    const other = ca.issue('laptop-43');
    const payload2 = await verify(await idp.certBoundToken(other.certPem, other.keyPem));
    expect(payload2.cnf).toEqual({ 'x5t#S256': other.thumbprint });
    expect(payload2.sub).toBe('zt-test-client');
  });

  it('takes the certificate from the TLS handshake only', async () => {
    const device = ca.issue('laptop-44');
    const { client_id: clientId } = await verify(await idp.certBoundToken(device.certPem, device.keyPem));
    expect(clientId).toEqual(expect.any(String));

    // The same client over the plain-HTTP endpoint has no certificate, so it cannot authenticate.
    const res = await fetch(`${idp.issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId as string }),
    });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: 'invalid_client' });

    // A certificate without its private key cannot even start the handshake.
    const other = ca.issue('laptop-45');
    await expect(idp.certBoundToken(device.certPem, other.keyPem)).rejects.toThrow(/key values mismatch/);
  });

  it('uses the configured audience', async () => {
    const custom = await startOidcProvider({ audience: 'https://api.internal.example' });
    try {
      const customJwks = createRemoteJWKSet(new URL(custom.jwksUrl));
      const { payload } = await jwtVerify(await custom.bearerToken(), customJwks, {
        issuer: custom.issuer,
        audience: 'https://api.internal.example',
      });
      expect(payload.aud).toBe('https://api.internal.example');
      // Tokens from one provider do not verify against another's keys.
      await expect(jwtVerify(await custom.bearerToken(), jwks)).rejects.toThrow();
    } finally {
      await custom.close();
    }
  });
});
