// An https upstream must prove who it is: a certificate the gateway cannot verify is a 502,
// and nothing (no assertion, no body) is sent to whoever answered. reply-from's default turns
// this check off; the gateway's own dispatcher (src/pipeline/proxy.ts) keeps it on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { createIssuer } from '../../src/dev/issuer.ts';
import { createDeviceCa, createServerCert } from '../helpers/certs.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';

const ISS = 'https://idp.upstream-tls.test/';
let impostor: https.Server;
let seen = 0;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let token: string;

beforeAll(async () => {
  // Signed by a CA nobody trusts: what an attacker on the path to the upstream could present.
  const untrusted = createDeviceCa('not a CA the gateway trusts');
  const cert = createServerCert(untrusted, ['127.0.0.1']);
  impostor = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    seen++;
    res.end('{"impostor":true}');
  });
  await new Promise<void>((resolve) => impostor.listen(0, '127.0.0.1', resolve));
  const idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  const port = (impostor.address() as AddressInfo).port;
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [{ name: 'tls', pathPrefix: '/tls/', upstream: `https://127.0.0.1:${port}` }],
  });
  token = await idp.sign({}, { sub: 'alice', aud: 'zt-gateway', expiresIn: '10m' });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await new Promise((resolve) => impostor?.close(resolve));
});

describe('https upstreams', () => {
  it('refuses an upstream whose certificate does not verify: 502, and nothing is sent to it', async () => {
    const res = await rawRequest(gw.url, '/tls/x', { method: 'POST', body: 'secret body', headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(502);
    expect(res.json().code).toBe('ERR_UPSTREAM_UNREACHABLE');
    expect(seen).toBe(0);
  });
});
