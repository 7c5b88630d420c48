// Item 10 of issue 11, as an attacker (and an operator) tries it:
// - a revoked device is refused on every route that has an identity: binding off,
//   optional and required, DPoP and mTLS, also when the token is not bound but the TLS
//   handshake presented the revoked certificate;
// - the owner of a device is (issuer, subject): the same `sub` at another IdP is not it;
// - re-enrolling does not silently clear a revocation (`--reinstate` does);
// - `ztgw device checkin|update` and an MDM job writing Redis keep a device from going stale.
// Every refusal also checks that the upstream saw nothing. The CLI runs as operators run it.
import { spawn } from 'node:child_process';
import { Agent, request as httpsRequest } from 'node:https';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { stringify } from 'yaml';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer, type Issuer } from '../../src/dev/issuer.ts';
import { createFileRegistry } from '../../src/identity/devices/file-store.ts';
import { createRedisRegistry } from '../../src/identity/devices/redis-store.ts';
import type { DevicePosture, DeviceRegistry } from '../../src/identity/devices/registry.ts';
import { newDpopKey, type DpopKey } from '../helpers/dpop-key.ts';
import { createDeviceCa, createServerCert, type DeviceCa, type IssuedCert } from '../helpers/certs.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest, type RawResponse } from '../helpers/http.ts';
import { startRedis, type RedisProcess } from '../helpers/redis.ts';

const CLI = resolve(import.meta.dirname, '../../src/cli/ztgw.ts');

let dir: string;
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idpA: Issuer;
let idpB: Issuer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-attack-devices-'));
  echo = await startEchoServer();
  idpA = await createIssuer({ issuer: 'https://idp-a.test/' });
  idpB = await createIssuer({ issuer: 'https://idp-b.test/' });
  writeFileSync(join(dir, 'jwks-a.json'), JSON.stringify(idpA.publicJwks()));
  writeFileSync(join(dir, 'jwks-b.json'), JSON.stringify(idpB.publicJwks()));
});
afterAll(async () => {
  await echo?.close();
});
beforeEach(() => {
  echo.requests.length = 0;
});

const issuerA = () => ({ name: 'a', issuer: idpA.issuer, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksFile: 'jwks-a.json' });
const issuerB = () => ({ name: 'b', issuer: idpB.issuer, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksFile: 'jwks-b.json' });

const ROUTES = [
  { name: 'public', pathPrefix: '/public/', public: true },
  { name: 'off', pathPrefix: '/off/', device: { binding: 'off' } },
  { name: 'open', pathPrefix: '/open/', device: { binding: 'optional' } },
  { name: 'bound', pathPrefix: '/bound/', device: { binding: 'required' } },
  { name: 'trusted', pathPrefix: '/trusted/', device: { binding: 'required', requireEnrolled: true } },
];

function gatewayConfig(registry: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    identity: { issuers: [issuerA(), issuerB()] },
    routes: ROUTES.map((r) => ({ ...r, upstream: echo.url })),
    devices: { registry, staleAfterS: 3600 },
    ...extra,
  };
}

const posture = (lastCheckIn = new Date().toISOString()): DevicePosture => ({
  managed: true,
  diskEncrypted: true,
  os: 'macOS',
  osVersion: '15.1',
  lastCheckIn,
  trustLevel: 'high',
});

// ── DPoP client: a key (helpers/dpop-key.ts), tokens bound to it ─────────────────────

const token = (idp: Issuer, sub: string, cnf?: Record<string, string>) =>
  idp.sign(cnf === undefined ? {} : { cnf }, { sub, aud: 'zt-gateway', expiresIn: '10m' });

function dpopCall(gw: TestGateway, path: string, accessToken: string, key: DpopKey, tls?: { ca: string; cert?: string; key?: string }): Promise<RawResponse> {
  return rawRequest(gw.url, path, { headers: { authorization: `DPoP ${accessToken}`, dpop: key.proof(gw.url + path, accessToken) }, tls });
}

function expectRefused(res: RawResponse, status: number, code: string): void {
  expect(res.status, res.text).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.json().code).toBe(code);
  expect(echo.requests).toHaveLength(0);
}

/** Polls until `check` holds; fails with the last value after `ms`. */
async function eventually<T>(read: () => Promise<T>, check: (v: T) => boolean, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await read();
    if (check(value)) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms; last value ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** `ztgw …` as a separate process, as an operator or an MDM job runs it. */
function ztgw(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('error', reject);
    child.on('close', (status) => resolvePromise({ status, stdout, stderr }));
  });
}

/** A config file for the CLI naming the same registry as the gateway under test. */
function cliConfig(name: string, issuers: Record<string, unknown>[], registry: Record<string, unknown>, redisUrl?: string): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    stringify({
      identity: { issuers },
      routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
      devices: { registry },
      ...(redisUrl !== undefined && { redis: { url: redisUrl } }),
    }),
  );
  return file;
}

/**
 * A gateway on the file registry `file`, in which a fresh DPoP key (`laptop`) is enrolled to
 * alice at idpA, and a token of alice's bound to that key.
 */
async function startWithEnrolledKey(file: string): Promise<{ gw: TestGateway; registry: DeviceRegistry; laptop: DpopKey; bound: string }> {
  const laptop = newDpopKey();
  const bound = await token(idpA, 'alice', { jkt: laptop.jkt });
  const registry = createFileRegistry({ file });
  await registry.enroll({ id: laptop.jkt, owner: 'alice', issuer: idpA.issuer, posture: posture() });
  const gw = await startTestGateway(gatewayConfig({ file }), { dir }).catch(async (err) => {
    await registry.close();
    throw err;
  });
  return { gw, registry, laptop, bound };
}

// ── revoked everywhere: DPoP ────────────────────────────────────────────────────────

describe('a revoked DPoP key', () => {
  let gw: TestGateway;
  let registry: DeviceRegistry;
  let laptop: DpopKey;
  let bound: string;

  beforeAll(async () => {
    ({ gw, registry, laptop, bound } = await startWithEnrolledKey(join(dir, 'dpop-devices.yaml')));
  });
  afterAll(async () => {
    await gw?.close();
    await registry?.close();
  });

  it('passes on every kind of route while enrolled and not revoked', async () => {
    for (const path of ['/off/x', '/open/x', '/bound/x', '/trusted/x']) expect((await dpopCall(gw, path, bound, laptop)).status, path).toBe(200);
  });

  it('is refused with 403 ERR_DEVICE_REVOKED on off, optional, required and enrolled-only routes', async () => {
    await registry.revoke(laptop.jkt);
    await eventually(() => dpopCall(gw, '/trusted/x', bound, laptop), (r) => r.status === 403);
    echo.requests.length = 0;
    for (const path of ['/off/x', '/open/x', '/bound/x', '/trusted/x', '/off/%78', '/off//x']) {
      expectRefused(await dpopCall(gw, path, bound, laptop), 403, 'ERR_DEVICE_REVOKED');
    }
    // The scheme spelled otherwise (RFC 9110 §11.1: case-insensitive) is the same request.
    const proof = laptop.proof(`${gw.url}/off/x`, bound);
    expectRefused(await rawRequest(gw.url, '/off/x', { headers: { authorization: `dpop ${bound}`, dpop: proof } }), 403, 'ERR_DEVICE_REVOKED');
    // Another token bound to the same key (a fresh one from the IdP) changes nothing.
    const fresh = await token(idpA, 'alice', { jkt: laptop.jkt });
    expectRefused(await dpopCall(gw, '/off/x', fresh, laptop), 403, 'ERR_DEVICE_REVOKED');
  });

  it('a public route stays reachable: it has no identity to protect (sign-in, help pages)', async () => {
    expect((await dpopCall(gw, '/public/x', bound, laptop)).status).toBe(200);
  });

  it('a key the registry does not know passes where no enrolment is required', async () => {
    const other = newDpopKey();
    const otherToken = await token(idpA, 'alice', { jkt: other.jkt });
    for (const path of ['/off/x', '/open/x', '/bound/x']) expect((await dpopCall(gw, path, otherToken, other)).status, path).toBe(200);
  });
});

// ── revoked everywhere: mTLS ────────────────────────────────────────────────────────

describe('a revoked client certificate', () => {
  let gw: TestGateway;
  let registry: DeviceRegistry;
  let deviceCa: DeviceCa;
  let serverCa: DeviceCa;
  let revoked: IssuedCert;
  let healthy: IssuedCert;
  let bearer: string;
  const file = () => join(dir, 'mtls-devices.yaml');
  const call = (path: string, authorization: string, cert?: IssuedCert, headers: Record<string, string> = {}) =>
    rawRequest(gw.url, path, {
      headers: { ...(authorization !== '' && { authorization }), ...headers },
      tls: { ca: serverCa.caCertPem, ...(cert && { cert: cert.certPem, key: cert.keyPem }) },
    });

  beforeAll(async () => {
    deviceCa = createDeviceCa('attack device CA');
    serverCa = createDeviceCa('attack server CA');
    const serverCert = createServerCert(serverCa, ['127.0.0.1']);
    writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
    writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
    writeFileSync(join(dir, 'device-ca.crt'), deviceCa.caCertPem);
    revoked = deviceCa.issue('lost-laptop');
    healthy = deviceCa.issue('desk');
    registry = createFileRegistry({ file: file() });
    await registry.enroll({ id: revoked.thumbprint, owner: 'alice', issuer: idpA.issuer, posture: posture() });
    await registry.enroll({ id: healthy.thumbprint, owner: 'alice', issuer: idpA.issuer, posture: posture() });
    await registry.revoke(revoked.thumbprint);
    bearer = await token(idpA, 'alice');
    gw = await startTestGateway(
      gatewayConfig({ file: file() }, { server: { tls: { certFile: 'server.crt', keyFile: 'server.key', clientCaFile: 'device-ca.crt' } } }),
      { dir },
    );
  });
  afterAll(async () => {
    await gw?.close();
    await registry?.close();
  });

  it('is refused with a plain bearer token on off and optional routes: the handshake named the device', async () => {
    for (const path of ['/off/x', '/open/x']) expectRefused(await call(path, `Bearer ${bearer}`, revoked), 403, 'ERR_DEVICE_REVOKED');
  });

  it('is refused with a token bound to it, on required and enrolled-only routes', async () => {
    const certBound = await token(idpA, 'alice', { 'x5t#S256': revoked.thumbprint });
    for (const path of ['/off/x', '/open/x', '/bound/x', '/trusted/x']) {
      expectRefused(await call(path, `Bearer ${certBound}`, revoked), 403, 'ERR_DEVICE_REVOKED');
    }
  });

  it('is refused even when the token is bound to a healthy DPoP key instead', async () => {
    const key = newDpopKey();
    const dpopBound = await token(idpA, 'alice', { jkt: key.jkt });
    const res = await dpopCall(gw, '/open/x', dpopBound, key, { ca: serverCa.caCertPem, cert: revoked.certPem, key: revoked.keyPem });
    expectRefused(res, 403, 'ERR_DEVICE_REVOKED');
  });

  it('a healthy certificate, or none, passes; a public route is not checked', async () => {
    expect((await call('/open/x', `Bearer ${bearer}`, healthy)).status).toBe(200);
    expect((await call('/off/x', `Bearer ${bearer}`)).status).toBe(200);
    expect((await call('/open/x', `Bearer ${bearer}`)).status).toBe(200);
    expect((await call('/public/x', '', revoked)).status).toBe(200);
  });

  it('a revocation reaches a connection already open: the certificate is looked up per request, not per handshake', async () => {
    const spare = deviceCa.issue('spare');
    await registry.enroll({ id: spare.thumbprint, owner: 'alice', issuer: idpA.issuer, posture: posture() });
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: serverCa.caCertPem, cert: spare.certPem, key: spare.keyPem });
    const { port } = new URL(gw.url);
    const get = () =>
      new Promise<{ status: number; localPort: number | undefined }>((resolvePromise, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/open/x', agent, headers: { authorization: `Bearer ${bearer}` } }, (res) => {
          res.resume();
          res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, localPort: res.socket?.localPort }));
        });
        req.on('error', reject);
        req.end();
      });
    try {
      const before = await eventually(get, (r) => r.status === 200);
      await registry.revoke(spare.thumbprint);
      const after = await eventually(get, (r) => r.status === 403);
      expect(after.localPort).toBe(before.localPort); // the same TLS connection throughout
    } finally {
      agent.destroy();
    }
  });

  it('headers cannot stand in for the handshake: a forged client-certificate header names no device', async () => {
    const forged = { 'x-forwarded-client-cert': `Hash=${healthy.thumbprint}`, 'x-ssl-client-cert': healthy.certPem.replace(/\n/g, '') };
    expectRefused(await call('/open/x', `Bearer ${bearer}`, revoked, forged), 403, 'ERR_DEVICE_REVOKED');
  });
});

// ── ownership is (issuer, subject) ──────────────────────────────────────────────────

describe('device ownership', () => {
  let gw: TestGateway;
  let registry: DeviceRegistry;
  let laptop: DpopKey;
  let tokenA: string;
  const file = () => join(dir, 'owner-devices.yaml');

  beforeAll(async () => {
    ({ gw, registry, laptop, bound: tokenA } = await startWithEnrolledKey(file()));
  });
  afterAll(async () => {
    await gw?.close();
    await registry?.close();
  });

  it('the owner at its issuer passes an enrolled-only route', async () => {
    expect((await dpopCall(gw, '/trusted/x', tokenA, laptop)).status).toBe(200);
  });

  it('the same sub at another issuer is not the owner', async () => {
    const impostor = await token(idpB, 'alice', { jkt: laptop.jkt });
    expectRefused(await dpopCall(gw, '/trusted/x', impostor, laptop), 403, 'ERR_DEVICE_NOT_TRUSTED');
  });

  it('an issuer is matched exactly (a record naming a near spelling owns nothing)', async () => {
    // 'a' is the issuer's config name: records keep the iss, which survives a rename.
    for (const near of ['https://idp-a.test', 'HTTPS://IDP-A.TEST/', 'a']) {
      await registry.enroll({ id: laptop.jkt, owner: 'alice', issuer: near, posture: posture() });
      const res = await eventually(() => dpopCall(gw, '/trusted/x', tokenA, laptop), (r) => r.status === 403);
      expect(res.json().code).toBe('ERR_DEVICE_NOT_TRUSTED');
      await registry.enroll({ id: laptop.jkt, owner: 'alice', issuer: idpA.issuer, posture: posture() });
      await eventually(() => dpopCall(gw, '/trusted/x', tokenA, laptop), (r) => r.status === 200);
    }
  });

  it('a record without an issuer (enrolled before it was kept) fails closed while several issuers are configured', async () => {
    await registry.enroll({ id: laptop.jkt, owner: 'alice', posture: posture() });
    const res = await eventually(() => dpopCall(gw, '/trusted/x', tokenA, laptop), (r) => r.status === 403);
    expect(res.json().code).toBe('ERR_DEVICE_NOT_TRUSTED');
  });

  it('…and matches its owner when exactly one issuer is configured', async () => {
    const single = await startTestGateway({ ...gatewayConfig({ file: file() }), identity: { issuers: [issuerA()] } }, { dir });
    try {
      expect((await registry.get(laptop.jkt))?.issuer).toBeUndefined();
      expect((await dpopCall(single, '/trusted/x', tokenA, laptop)).status).toBe(200);
    } finally {
      await single.close();
    }
  });
});

// ── re-enrolment and check-in through the real CLI (file registry) ──────────────────

describe('ztgw device against the file registry a gateway watches', () => {
  let gw: TestGateway;
  let laptop: DpopKey;
  let tokenA: string;
  let config: string;
  const file = () => join(dir, 'cli-devices.yaml');
  const trusted = () => dpopCall(gw, '/trusted/x', tokenA, laptop);

  beforeAll(async () => {
    laptop = newDpopKey();
    tokenA = await token(idpA, 'alice', { jkt: laptop.jkt });
    config = cliConfig('cli-file', [issuerA(), issuerB()], { file: file() });
    gw = await startTestGateway(gatewayConfig({ file: file() }), { dir });
  });
  afterAll(() => gw?.close());

  /** Runs the CLI, then waits for the gateway to have reloaded the file it wrote. */
  async function cli(...args: string[]) {
    const reloads = gw.logs.filter((l) => l.msg === 'device file reloaded').length;
    const run = await ztgw(['device', ...args, '--config', config]);
    if (run.status === 0 && !['list'].includes(args[0]!)) {
      await eventually(async () => gw.logs.filter((l) => l.msg === 'device file reloaded').length, (n) => n > reloads);
    }
    return run;
  }

  it('enroll needs --issuer when several are configured, and refuses an unknown one', async () => {
    const none = await ztgw(['device', 'enroll', '--config', config, '--id', laptop.jkt, '--owner', 'alice']);
    expect(none.status).toBe(2);
    expect(none.stderr).toContain('--issuer is required when several issuers are configured (a, b)');
    const typo = await ztgw(['device', 'enroll', '--config', config, '--id', laptop.jkt, '--owner', 'alice', '--issuer', 'https://idp-c.test/']);
    expect(typo.status).toBe(2);
  }, 30_000);

  it('re-enrolling a revoked device keeps it revoked; --reinstate lifts it', async () => {
    const enrolled = await cli('enroll', '--id', laptop.jkt, '--owner', 'alice', '--issuer', 'a', '--managed', '--trust', 'high');
    expect(enrolled.stdout).toBe(`enrolled ${laptop.jkt} (owner alice at ${idpA.issuer}, trust high)\n`);
    expect((await trusted()).status).toBe(200);

    expect((await cli('revoke', '--id', laptop.jkt)).status).toBe(0);
    echo.requests.length = 0;
    expectRefused(await trusted(), 403, 'ERR_DEVICE_REVOKED');

    // An operator (or a script) re-runs the enrolment: the device stays revoked.
    const again = await cli('enroll', '--id', laptop.jkt, '--owner', 'alice', '--issuer', 'a', '--managed', '--trust', 'high');
    expect(again.status).toBe(0);
    expect(again.stdout).toContain('stays revoked');
    expectRefused(await trusted(), 403, 'ERR_DEVICE_REVOKED');
    expectRefused(await dpopCall(gw, '/off/x', tokenA, laptop), 403, 'ERR_DEVICE_REVOKED');

    // A check-in or posture update does not bring it back either.
    expect((await cli('checkin', '--id', laptop.jkt)).status).toBe(0);
    expect((await cli('update', '--id', laptop.jkt, '--managed', '--trust', 'high')).status).toBe(0);
    expectRefused(await trusted(), 403, 'ERR_DEVICE_REVOKED');

    expect((await cli('enroll', '--id', laptop.jkt, '--owner', 'alice', '--issuer', 'a', '--managed', '--trust', 'high', '--reinstate')).status).toBe(0);
    expect((await trusted()).status).toBe(200);
  }, 60_000);

  it('a stale device is refused; `ztgw device checkin` makes it fresh again without re-enrolling', async () => {
    const monthAgo = new Date(Date.now() - 30 * 24 * 3600_000).toISOString();
    expect((await cli('update', '--id', laptop.jkt, '--at', monthAgo)).status).toBe(0);
    echo.requests.length = 0;
    expectRefused(await trusted(), 403, 'ERR_DEVICE_NOT_TRUSTED');

    const checkin = await cli('checkin', '--id', laptop.jkt);
    expect(checkin.status).toBe(0);
    expect(checkin.stdout).toMatch(new RegExp(`^checked in ${laptop.jkt} at \\d{4}-`));
    expect((await trusted()).status).toBe(200);
    const listed = JSON.parse((await ztgw(['device', 'list', '--json', '--config', config])).stdout);
    expect(listed[0]).toMatchObject({ id: laptop.jkt, owner: 'alice', issuer: idpA.issuer, posture: { managed: true, trustLevel: 'high' } });
    expect(listed[0].revokedAt).toBeUndefined();
  }, 60_000);

  it('update of an unknown device exits 1 and writes nothing', async () => {
    const ghost = newDpopKey().jkt;
    const run = await ztgw(['device', 'update', '--config', config, '--id', ghost, '--managed']);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain(`no device ${ghost} is enrolled`);
  }, 30_000);
});

// ── check-in and the MDM path with the Redis registry ───────────────────────────────

describe('the Redis registry: ztgw device checkin|update and an MDM job writing the hash', () => {
  let redis: RedisProcess;
  let client: Redis;
  let gw: TestGateway;
  let laptop: DpopKey;
  let tokenA: string;
  let config: string;
  const trusted = () => dpopCall(gw, '/trusted/x', tokenA, laptop);

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url);
    laptop = newDpopKey();
    tokenA = await token(idpA, 'alice', { jkt: laptop.jkt });
    config = cliConfig('cli-redis', [issuerA()], { redis: true }, redis.url);
    gw = await startTestGateway(
      { ...gatewayConfig({ redis: true }), redis: { url: redis.url }, devices: { registry: { redis: true }, staleAfterS: 3600, cacheTtlMs: 500 } },
      { dir },
    );
  });
  afterAll(async () => {
    await gw?.close();
    client?.disconnect();
    await redis?.stop();
  });

  it('enroll (issuer defaulted to the only one), revoke, re-enroll keeps the revocation, --reinstate lifts it', async () => {
    expect((await ztgw(['device', 'enroll', '--config', config, '--id', laptop.jkt, '--owner', 'alice', '--managed', '--trust', 'high'])).status).toBe(0);
    expect(await client.hget(`ztgw:device:${laptop.jkt}`, 'issuer')).toBe(idpA.issuer);
    await eventually(trusted, (r) => r.status === 200);
    expect((await ztgw(['device', 'revoke', '--config', config, '--id', laptop.jkt])).status).toBe(0);
    await eventually(trusted, (r) => r.status === 403);
    expect((await ztgw(['device', 'enroll', '--config', config, '--id', laptop.jkt, '--owner', 'alice', '--managed', '--trust', 'high'])).status).toBe(0);
    expect(await client.hget(`ztgw:device:${laptop.jkt}`, 'revokedAt')).not.toBeNull();
    echo.requests.length = 0;
    expectRefused(await dpopCall(gw, '/off/x', tokenA, laptop), 403, 'ERR_DEVICE_REVOKED');
    expect((await ztgw(['device', 'enroll', '--config', config, '--id', laptop.jkt, '--owner', 'alice', '--managed', '--trust', 'high', '--reinstate'])).status).toBe(0);
    await eventually(trusted, (r) => r.status === 200);
  }, 60_000);

  it('ztgw device update then checkin: stale, then fresh, never re-enrolled', async () => {
    const monthAgo = new Date(Date.now() - 30 * 24 * 3600_000).toISOString();
    const enrolledAt = await client.hget(`ztgw:device:${laptop.jkt}`, 'enrolledAt');
    expect((await ztgw(['device', 'update', '--config', config, '--id', laptop.jkt, '--at', monthAgo, '--os', 'macOS'])).status).toBe(0);
    await eventually(trusted, (r) => r.status === 403);
    expect((await ztgw(['device', 'checkin', '--config', config, '--id', laptop.jkt])).status).toBe(0);
    await eventually(trusted, (r) => r.status === 200);
    expect(await client.hget(`ztgw:device:${laptop.jkt}`, 'enrolledAt')).toBe(enrolledAt);
  }, 60_000);

  it('an MDM job HSETs the posture field alone (no PUBLISH): every instance sees it within cacheTtlMs', async () => {
    const key = `ztgw:device:${laptop.jkt}`;
    await client.hset(key, 'posture', JSON.stringify(posture(new Date(Date.now() - 30 * 24 * 3600_000).toISOString())));
    await eventually(trusted, (r) => r.status === 403, 3000);
    const started = Date.now();
    await client.hset(key, 'posture', JSON.stringify(posture()));
    await eventually(trusted, (r) => r.status === 200, 3000);
    // cacheTtlMs is 500: one expiry plus a round trip, far under the 3 s allowed above.
    expect(Date.now() - started).toBeLessThan(2000);
    // The same write on a revoked device leaves it revoked: revokedAt is its own field.
    await client.hset(key, 'revokedAt', new Date().toISOString());
    await eventually(trusted, (r) => r.status === 403, 3000);
    await client.hset(key, 'posture', JSON.stringify(posture()));
    await client.publish('ztgw:device:events', laptop.jkt);
    echo.requests.length = 0;
    expectRefused(await trusted(), 403, 'ERR_DEVICE_REVOKED');
  }, 30_000);

  it('a posture an MDM job got wrong fails closed (503), never open', async () => {
    const other = newDpopKey();
    const otherToken = await token(idpA, 'alice', { jkt: other.jkt });
    const registry = createRedisRegistry({ redis: client, pubsub: false });
    await registry.enroll({ id: other.jkt, owner: 'alice', issuer: idpA.issuer, posture: posture() });
    await client.hset(`ztgw:device:${other.jkt}`, 'posture', '{"managed":"yes"}');
    await client.publish('ztgw:device:events', other.jkt);
    const res = await eventually(() => dpopCall(gw, '/open/x', otherToken, other), (r) => r.status !== 200, 3000);
    expect(res.status).toBe(503);
    expect(res.json().code).toBe('ERR_DEPENDENCY_UNAVAILABLE');
    await registry.close();
  });
});
