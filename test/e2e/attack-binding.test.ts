// Adversarial: sender-constrained tokens under the wrong scheme, with half their proofs, with
// a certificate from another CA; and what the gateway tells a client and its operators when a
// DPoP proof fails. Real keys, a JWKS over HTTP, real DPoP proofs (the `dpop` package), real
// mutual TLS against a device CA made with openssl. The upstream must see nothing refused.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { generateKeyPair as dpopKeyPair, generateProof } from 'dpop';
import { exportJWK, type JWK } from 'jose';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer, type Issuer } from '../../src/dev/issuer.ts';
import { serveJwks, type JwksServer } from '../helpers/jwks-server.ts';
import { certThumbprint, createDeviceCa, createServerCert, type DeviceCa, type IssuedCert } from '../helpers/certs.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest, type RawResponse } from '../helpers/http.ts';

type KeyPair = Awaited<ReturnType<typeof dpopKeyPair>>;

const ISS = 'https://idp.binding.test/';
const AUD = 'zt-gateway';
const ALGS = ['ES256', 'PS256'];

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Issuer;
let jwks: JwksServer;
let gw: TestGateway;
let deviceCa: DeviceCa;
let serverCa: DeviceCa;
let laptop: IssuedCert;
let device: KeyPair;
let jkt: string;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ztgw-binding-'));
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  deviceCa = createDeviceCa('binding device CA');
  serverCa = createDeviceCa('binding server CA');
  const serverCert = createServerCert(serverCa, ['127.0.0.1']);
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
  writeFileSync(join(dir, 'device-ca.crt'), deviceCa.caCertPem);
  laptop = deviceCa.issue('laptop-1');
  device = await dpopKeyPair('ES256');
  const { kty, crv, x, y } = (await exportJWK(device.publicKey)) as JWK;
  jkt = createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');
  gw = await startTestGateway(
    {
      server: { tls: { certFile: 'server.crt', keyFile: 'server.key', clientCaFile: 'device-ca.crt' } },
      identity: {
        issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }],
        dpop: { algorithms: ALGS },
      },
      routes: [
        { name: 'bound', pathPrefix: '/bound/', upstream: echo.url, device: { binding: 'required' } },
        { name: 'open', pathPrefix: '/open/', upstream: echo.url, device: { binding: 'optional' } },
      ],
      devices: { registry: { file: join(dir, 'devices.yaml') } },
    },
    { dir },
  );
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

const token = (cnf?: Record<string, unknown>, sub = 'alice') => idp.sign(cnf === undefined ? {} : { cnf }, { sub, aud: AUD, expiresIn: '5m' });

async function send(
  path: string,
  opts: { auth?: string; proof?: string; cert?: { certPem: string; keyPem: string }; method?: string } = {},
): Promise<RawResponse> {
  const headers: Record<string, string> = {};
  if (opts.auth !== undefined) headers.authorization = opts.auth;
  if (opts.proof !== undefined) headers.dpop = opts.proof;
  return rawRequest(gw.url, path, {
    method: opts.method ?? 'GET',
    headers,
    tls: { ca: serverCa.caCertPem, ...(opts.cert ? { cert: opts.cert.certPem, key: opts.cert.keyPem } : {}) },
  });
}

const proofFor = (path: string, tok: string, method = 'GET', key: KeyPair = device) => generateProof(key, `${gw.url}${path}`, method, undefined, tok);

function expectRefused(res: RawResponse, status: number, code: string) {
  expect(res.status, res.text).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.json().code).toBe(code);
  expect(echo.requests).toHaveLength(0);
}

const challenge = (res: RawResponse) => String(res.headers['www-authenticate']);

describe('binding schemes', () => {
  it('accepts each binding under its own scheme with its proof (the baselines)', async () => {
    const dpopBound = await token({ jkt });
    expect((await send('/bound/x', { auth: `DPoP ${dpopBound}`, proof: await proofFor('/bound/x', dpopBound) })).status).toBe(200);
    const certBound = await token({ 'x5t#S256': laptop.thumbprint });
    expect((await send('/bound/x', { auth: `Bearer ${certBound}`, cert: laptop })).status).toBe(200);
  });

  it('answers a DPoP-bound token sent as Bearer with a DPoP challenge naming the configured algs', async () => {
    const tok = await token({ jkt });
    for (const auth of [`Bearer ${tok}`, `bearer ${tok}`, `BEARER ${tok}`]) {
      // With a valid proof too: the scheme alone decides.
      const res = await send('/open/x', { auth, proof: await proofFor('/open/x', tok) });
      expectRefused(res, 401, 'ERR_INVALID_TOKEN');
      expect(challenge(res)).toMatch(/^DPoP /);
      expect(challenge(res)).toContain('error="invalid_token"');
      expect(challenge(res)).toContain(`algs="${ALGS.join(' ')}"`);
    }
  });

  it('advertises the DPoP scheme (with algs) on a route that requires binding, when no token is sent', async () => {
    const res = await send('/bound/x');
    expectRefused(res, 401, 'ERR_MISSING_TOKEN');
    expect(challenge(res)).toMatch(/^Bearer realm="zt-gateway"/);
    expect(challenge(res)).toMatch(new RegExp(`DPoP realm="zt-gateway", algs="${ALGS.join(' ')}"`));
    // A route without the requirement offers Bearer only.
    const open = await send('/open/x');
    expect(challenge(open)).not.toContain('DPoP');
  });

  it('advertises the DPoP scheme on a required route for an unbound or an invalid token', async () => {
    const unbound = await send('/bound/x', { auth: `Bearer ${await token()}` });
    expectRefused(unbound, 401, 'ERR_DEVICE_BINDING_REQUIRED');
    expect(challenge(unbound)).toContain('DPoP realm="zt-gateway"');
    expect(challenge(unbound)).toContain(`algs="${ALGS.join(' ')}"`);
    const invalid = await send('/bound/x', { auth: 'Bearer not.a.token' });
    expectRefused(invalid, 401, 'ERR_INVALID_TOKEN');
    expect(challenge(invalid)).toContain(`DPoP realm="zt-gateway", algs="${ALGS.join(' ')}"`);
  });

  it('refuses a certificate-bound token under the DPoP scheme, even with its certificate and a proof', async () => {
    const tok = await token({ 'x5t#S256': laptop.thumbprint });
    expectRefused(await send('/bound/x', { auth: `DPoP ${tok}`, cert: laptop }), 401, 'ERR_INVALID_TOKEN');
    expectRefused(await send('/open/x', { auth: `DPoP ${tok}`, cert: laptop, proof: await proofFor('/open/x', tok) }), 401, 'ERR_INVALID_TOKEN');
  });

  describe('a token with both confirmations (cnf.jkt and cnf.x5t#S256)', () => {
    let both: string;
    beforeAll(async () => {
      both = await token({ jkt, 'x5t#S256': laptop.thumbprint });
    });

    it('is accepted with the DPoP proof and the certificate', async () => {
      const res = await send('/bound/x', { auth: `DPoP ${both}`, proof: await proofFor('/bound/x', both), cert: laptop });
      expect(res.status).toBe(200);
    });

    it('is refused with the proof but without the certificate', async () => {
      expectRefused(await send('/bound/x', { auth: `DPoP ${both}`, proof: await proofFor('/bound/x', both) }), 401, 'ERR_CERTIFICATE_MISMATCH');
    });

    it('is refused with the proof and another device’s certificate', async () => {
      const other = deviceCa.issue('laptop-2');
      expectRefused(await send('/open/x', { auth: `DPoP ${both}`, proof: await proofFor('/open/x', both), cert: other }), 401, 'ERR_CERTIFICATE_MISMATCH');
    });

    it('is refused with the certificate but without a proof', async () => {
      expectRefused(await send('/bound/x', { auth: `DPoP ${both}`, cert: laptop }), 401, 'ERR_INVALID_DPOP_PROOF');
    });

    it('is refused as Bearer with the certificate (and a proof), with the DPoP challenge', async () => {
      const res = await send('/bound/x', { auth: `Bearer ${both}`, proof: await proofFor('/bound/x', both), cert: laptop });
      expectRefused(res, 401, 'ERR_INVALID_TOKEN');
      expect(challenge(res)).toMatch(/^DPoP .*algs=/);
    });
  });

  it('reports a certificate that does not chain to the device CA as untrusted, not as another device’s', async () => {
    const rogue = createDeviceCa('rogue CA').issue('laptop-1');
    const tok = await token({ 'x5t#S256': rogue.thumbprint });
    const res = await send('/bound/x', { auth: `Bearer ${tok}`, cert: rogue });
    expectRefused(res, 401, 'ERR_UNTRUSTED_CERTIFICATE');
    expect(challenge(res)).toContain('error="invalid_token"');
    // A self-signed certificate the token names: the same.
    const selfSigned = createDeviceCa('laptop-self');
    const selfCert = { certPem: selfSigned.caCertPem, keyPem: selfSigned.caKeyPem };
    const selfTok = await token({ 'x5t#S256': certThumbprint(selfSigned.caCertPem) });
    expectRefused(await send('/bound/x', { auth: `Bearer ${selfTok}`, cert: selfCert }), 401, 'ERR_UNTRUSTED_CERTIFICATE');
    // And a trusted certificate that is not the token's stays a mismatch.
    expectRefused(await send('/bound/x', { auth: `Bearer ${tok}`, cert: laptop }), 401, 'ERR_CERTIFICATE_MISMATCH');
  });
});

/** A request head written as given over mutual TLS; the whole answer read (Connection: close). */
function rawTls(head: string, cert: { certPem: string; keyPem: string }): Promise<{ status: number; head: string; body: string }> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: hostname, port: Number(port), ca: serverCa.caCertPem, cert: cert.certPem, key: cert.keyPem }, () => socket.write(head));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw exchange timed out')));
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [h = '', ...rest] = text.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(h)?.[1] ?? 0), head: h, body: rest.join('\r\n\r\n') });
    });
  });
}

describe('repeated credentials on a bound route', () => {
  it('refuses two DPoP headers with 401 invalid_dpop_proof, whatever their case (RFC 9449 §4.3)', async () => {
    const tok = await token({ jkt });
    const host = new URL(gw.url).host;
    for (const [a, b] of [['DPoP', 'DPoP'], ['dpop', 'DPOP']] as const) {
      const p1 = await proofFor('/bound/x', tok);
      const p2 = await proofFor('/bound/x', tok);
      const head = `GET /bound/x HTTP/1.1\r\nHost: ${host}\r\nAuthorization: DPoP ${tok}\r\n${a}: ${p1}\r\n${b}: ${p2}\r\nConnection: close\r\n\r\n`;
      const res = await rawTls(head, laptop);
      expect(res.status, res.head).toBe(401);
      expect(JSON.parse(res.body).code).toBe('ERR_INVALID_DPOP_PROOF');
      expect(res.head).toMatch(/www-authenticate: DPoP .*error="invalid_dpop_proof"/i);
    }
    expect(echo.requests).toHaveLength(0);
  });

  it('refuses two Authorization headers (DPoP and Bearer schemes) with 400', async () => {
    const tok = await token({ jkt });
    const host = new URL(gw.url).host;
    const head = `GET /bound/x HTTP/1.1\r\nHost: ${host}\r\nAuthorization: DPoP ${tok}\r\nauthorization: Bearer ${await token()}\r\nDPoP: ${await proofFor('/bound/x', tok)}\r\nConnection: close\r\n\r\n`;
    const res = await rawTls(head, laptop);
    expect(res.status, res.head).toBe(400);
    expect(echo.requests).toHaveLength(0);
  });
});

describe('a DPoP failure says why', () => {
  const failures = async (reason: string) => {
    const text = (await rawRequest(gw.adminUrl, '/metrics')).text;
    return Number(new RegExp(`^ztgw_dpop_failures_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
  };

  it('exposes every reason from the start, at zero', async () => {
    const text = (await rawRequest(gw.adminUrl, '/metrics')).text;
    for (const reason of ['jti_replay', 'htu', 'htm', 'iat', 'ath', 'jkt_mismatch', 'nonce', 'scheme']) {
      expect(text).toMatch(new RegExp(`^ztgw_dpop_failures_total\\{reason="${reason}"\\} \\d+$`, 'm'));
    }
  });

  it('counts a replay and an htu mismatch by reason, and logs them without the proof or token', async () => {
    const tok = await token({ jkt });
    const before = { replay: await failures('jti_replay'), htu: await failures('htu'), htm: await failures('htm'), scheme: await failures('scheme') };
    const proof = await proofFor('/bound/replay', tok);
    expect((await send('/bound/replay', { auth: `DPoP ${tok}`, proof })).status).toBe(200);
    echo.requests.length = 0;
    const replay = await send('/bound/replay', { auth: `DPoP ${tok}`, proof });
    expectRefused(replay, 401, 'ERR_INVALID_DPOP_PROOF');
    const elsewhere = await send('/bound/x', { auth: `DPoP ${tok}`, proof: await proofFor('/bound/elsewhere', tok) });
    expectRefused(elsewhere, 401, 'ERR_INVALID_DPOP_PROOF');
    const wrongMethod = await send('/bound/x', { auth: `DPoP ${tok}`, proof: await proofFor('/bound/x', tok, 'POST') });
    expectRefused(wrongMethod, 401, 'ERR_INVALID_DPOP_PROOF');
    expectRefused(await send('/bound/x', { auth: `Bearer ${tok}` }), 401, 'ERR_INVALID_TOKEN');

    expect(await failures('jti_replay')).toBe(before.replay + 1);
    expect(await failures('htu')).toBe(before.htu + 1);
    expect(await failures('htm')).toBe(before.htm + 1);
    expect(await failures('scheme')).toBe(before.scheme + 1);

    const lines = gw.logs.filter((l) => l.msg === 'dpop proof refused');
    const replayLine = lines.find((l) => l.reqId === replay.json().requestId);
    expect(replayLine).toMatchObject({ reason: 'jti_replay', route: 'bound' });
    expect(replayLine!.level).toBe(40); // warn
    expect(lines.find((l) => l.reqId === elsewhere.json().requestId)).toMatchObject({ reason: 'htu', route: 'bound' });
    for (const line of lines) {
      const text = JSON.stringify(line);
      expect(text).not.toContain(tok);
      expect(text).not.toContain(proof.split('.')[2]!);
    }
  });
});
