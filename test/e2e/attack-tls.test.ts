// Adversarial TLS on the data plane: a TLS 1.2 client that tries to renegotiate (a
// handshake-flooding DoS, and the one way a connection's client certificate could change under
// its requests), a client offering TLS 1.1 to a process whose defaults were lowered, and the
// client certificate read from the session on every request of a keep-alive connection.
// Real TLS and mutual TLS against a device CA made with openssl, over raw tls sockets.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls, { TLSSocket, type ConnectionOptions } from 'node:tls';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer, type Issuer } from '../../src/dev/issuer.ts';
import { serveJwks, type JwksServer } from '../helpers/jwks-server.ts';
import { createDeviceCa, createServerCert, type DeviceCa, type IssuedCert } from '../helpers/certs.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { parseResponses, type ParsedResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.tls.test/';
const AUD = 'zt-gateway';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Issuer;
let jwks: JwksServer;
let gw: TestGateway;
let dir: string;
let serverCa: DeviceCa;
let laptop: IssuedCert;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-tls-'));
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  const deviceCa = createDeviceCa('tls device CA');
  serverCa = createDeviceCa('tls server CA');
  const serverCert = createServerCert(serverCa, ['127.0.0.1']);
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
  writeFileSync(join(dir, 'device-ca.crt'), deviceCa.caCertPem);
  laptop = deviceCa.issue('laptop-1');
  gw = await startTestGateway(gatewayConfig(), { dir });
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

function gatewayConfig(): Record<string, unknown> {
  return {
    server: { tls: { certFile: 'server.crt', keyFile: 'server.key', clientCaFile: 'device-ca.crt' } },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'open', pathPrefix: '/open/', upstream: echo.url, public: true },
      { name: 'bound', pathPrefix: '/bound/', upstream: echo.url, device: { binding: 'required' } },
    ],
    devices: { registry: { file: join(dir, 'devices.yaml') } },
  };
}

/** A TLS connection to `target`, and what it receives, read as HTTP/1.1 responses. */
interface Connection {
  readonly socket: TLSSocket;
  /** Writes a request head and resolves with the next response on this connection. */
  request(path: string, lines?: string[]): Promise<ParsedResponse>;
  /** Everything received so far, latin1. */
  received(): string;
  /** Resolves when the connection has closed (rejects after 10 s). */
  closed: Promise<void>;
}

async function connect(target: TestGateway, options: ConnectionOptions = {}): Promise<Connection> {
  const { hostname, port } = new URL(target.url);
  const socket = tls.connect({ host: hostname, port: Number(port), ca: serverCa.caCertPem, ...options });
  let text = '';
  let answered = 0;
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (text += d));
  socket.on('error', () => {}); // the close is what the tests look at
  const closed = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`connection still open after 10 s; received ${JSON.stringify(text.slice(0, 300))}`)), 10_000);
    socket.once('close', () => (clearTimeout(timer), resolve()));
  });
  closed.catch(() => {});
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const host = `${hostname}:${port}`;
  return {
    socket,
    closed,
    received: () => text,
    request(path, lines = []) {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`);
      const index = answered++;
      return new Promise((resolve, reject) => {
        const until = Date.now() + 10_000;
        const poll = () => {
          let responses: ParsedResponse[] = [];
          try {
            responses = parseResponses(text);
          } catch {
            // incomplete: wait for more
          }
          if (responses.length > index) return resolve(responses[index]!);
          if (socket.destroyed || Date.now() > until) return reject(new Error(`no response ${index + 1} to ${path}; received ${JSON.stringify(text.slice(0, 300))}`));
          setTimeout(poll, 10);
        };
        poll();
      });
    },
  };
}

async function renegotiationsRefused(): Promise<number> {
  const text = (await rawRequest(gw.adminUrl, '/metrics')).text;
  return Number(/^ztgw_tls_renegotiations_refused_total (\d+)$/m.exec(text)?.[1] ?? NaN);
}

describe('renegotiation', () => {
  it('closes a TLS 1.2 connection whose client starts a new handshake, and answers nothing more on it', async () => {
    const before = await renegotiationsRefused();
    const conn = await connect(gw, { maxVersion: 'TLSv1.2' });
    expect(conn.socket.getProtocol()).toBe('TLSv1.2');
    expect((await conn.request('/open/before')).status).toBe(200);
    const answeredBefore = conn.received().length;

    let outcome: 'pending' | 'renegotiated' | 'failed' = 'pending';
    conn.socket.renegotiate({}, (err) => {
      outcome = err ? 'failed' : 'renegotiated';
      // Had the new handshake been accepted, this request would be answered on it.
      if (!err) conn.socket.write(`GET /open/after HTTP/1.1\r\nHost: ${new URL(gw.url).host}\r\nConnection: close\r\n\r\n`);
    });
    await conn.closed;

    expect(outcome).not.toBe('renegotiated');
    expect(conn.received().slice(answeredBefore)).toBe('');
    expect(echo.requests.map((r) => r.url)).not.toContain('/open/after');
    expect(await renegotiationsRefused()).toBe(before + 1);
    const line = gw.logs.find((l) => l.msg === 'tls renegotiation refused; connection closed');
    expect(line).toMatchObject({ level: 40, client: '127.0.0.1' });
  }, 20_000);

  it('still serves a fresh TLS 1.2 connection afterwards, several requests on it', async () => {
    const conn = await connect(gw, { maxVersion: 'TLSv1.2' });
    expect(conn.socket.getProtocol()).toBe('TLSv1.2');
    expect((await conn.request('/open/1')).status).toBe(200);
    expect((await conn.request('/open/2', ['Connection: close'])).status).toBe(200);
    await conn.closed;
  });

  it('serves TLS 1.3 (which has no renegotiation) as usual, keep-alive included', async () => {
    const before = await renegotiationsRefused();
    const conn = await connect(gw);
    expect(conn.socket.getProtocol()).toBe('TLSv1.3');
    for (let i = 0; i < 3; i++) expect((await conn.request(`/open/${i}`)).status).toBe(200);
    conn.socket.end();
    await conn.closed;
    expect(await renegotiationsRefused()).toBe(before);
  });
});

describe('the client certificate, read per request', () => {
  const token = (thumbprint: string) => idp.sign({ cnf: { 'x5t#S256': thumbprint } }, { sub: 'alice', aud: AUD, expiresIn: '5m' });

  it('reads the certificate from the TLS session for every request of a keep-alive connection', async () => {
    // Which sockets the gateway asked for a peer certificate, one entry per ask (the
    // X509 API and the older object API alike), so a per-connection memo shows as one.
    const x509 = vi.spyOn(TLSSocket.prototype, 'getPeerX509Certificate');
    const legacy = vi.spyOn(TLSSocket.prototype, 'getPeerCertificate');
    try {
      const conn = await connect(gw, { cert: laptop.certPem, key: laptop.keyPem });
      const asked = () => [...x509.mock.contexts, ...legacy.mock.contexts].filter((s) => s !== conn.socket).length;
      const bearer = `Authorization: Bearer ${await token(laptop.thumbprint)}`;
      const before = asked();
      expect((await conn.request('/bound/1', [bearer])).status).toBe(200);
      expect(asked()).toBe(before + 1);
      expect((await conn.request('/bound/2', [bearer])).status).toBe(200);
      expect(asked()).toBe(before + 2);
      // The same connection, a token bound to another certificate: refused on this request.
      const other = await conn.request('/bound/3', [`Authorization: Bearer ${await token('A'.repeat(43))}`, 'Connection: close']);
      expect(other.status).toBe(401);
      expect(JSON.parse(other.body).code).toBe('ERR_CERTIFICATE_MISMATCH');
      await conn.closed;
    } finally {
      x509.mockRestore();
      legacy.mockRestore();
    }
  });
});

describe('protocol versions', () => {
  let lowered: TestGateway;

  beforeAll(async () => {
    // As if the process ran with --tls-min-v1.0 --tls-cipher-list=DEFAULT@SECLEVEL=0 (flags an
    // operator may add for another client): Node's own defaults would then take TLS 1.0 and 1.1.
    const { DEFAULT_MIN_VERSION, DEFAULT_CIPHERS } = tls;
    tls.DEFAULT_MIN_VERSION = 'TLSv1';
    (tls as { DEFAULT_CIPHERS: string }).DEFAULT_CIPHERS = 'DEFAULT@SECLEVEL=0';
    try {
      lowered = await startTestGateway(gatewayConfig(), { dir });
    } finally {
      tls.DEFAULT_MIN_VERSION = DEFAULT_MIN_VERSION;
      (tls as { DEFAULT_CIPHERS: string }).DEFAULT_CIPHERS = DEFAULT_CIPHERS;
    }
  });

  afterAll(async () => {
    await lowered?.close();
  });

  it('refuses TLS 1.1 even when the process defaults allow it', async () => {
    const outcome = await connect(lowered, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }).then(
      (conn) => (conn.socket.destroy(), `connected with ${conn.socket.getProtocol()}`),
      (err: unknown) => err,
    );
    expect(outcome).toMatchObject({ code: expect.stringMatching(/PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/) });
  });

  it('takes TLS 1.2 there', async () => {
    const conn = await connect(lowered, { maxVersion: 'TLSv1.2' });
    expect((await conn.request('/open/x', ['Connection: close'])).status).toBe(200);
    await conn.closed;
  });
});
