// Config + policy set reload as one compiled unit: a SIGHUP applies a policies section it
// adds or removes; a reload whose policies name something the new config lacks is refused
// whole; a broken config never lets its policy edit in; policy edits are checked against
// the running config; unchanged parts are reused; restart-only fields are reported, not
// claimed; TLS certificate files are re-read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:tls';
import { stringify } from 'yaml';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { startGateway, type Gateway } from '../../src/gateway.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { rawRequest } from '../helpers/http.ts';
import { certThumbprint, createDeviceCa, createServerCert } from '../helpers/certs.ts';

const ISS = 'https://idp.test.local/';
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let quarantine: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
const tokens: Record<string, string> = {};
const dirs: string[] = [];

const DENY_ALL = `apiVersion: zt-gateway/v1
name: deny-all
rules:
  - name: nobody
    effect: deny
    when: 'true'
`;
const ALLOW_ENG = `apiVersion: zt-gateway/v1
name: code-readers
appliesTo: { routes: [code] }
rules:
  - name: engineers
    effect: allow
    when: '"eng" in identity.groups'
  - name: contractors-quarantined
    effect: allow
    when: '"contractor" in identity.groups'
    obligations:
      upstream: quarantine
`;
const TO_EXTRA = `apiVersion: zt-gateway/v1
name: to-extra
appliesTo: { routes: [code] }
rules:
  - name: sre-elsewhere
    effect: allow
    when: '"sre" in identity.groups'
    obligations:
      upstream: extra
`;

beforeAll(async () => {
  echo = await startEchoServer();
  quarantine = await startEchoServer();
  idp = await createIssuer({ issuer: ISS });
  jwks = await serveJwks(() => idp.publicJwks());
  for (const [sub, groups] of [['alice', ['eng']], ['carol', ['contractor']], ['sam', ['sre']]] as const) {
    tokens[sub] = await idp.sign({ groups }, { sub, aud: 'zt-gateway', expiresIn: '10m' });
  }
});

afterAll(async () => {
  await jwks?.close();
  await echo?.close();
  await quarantine?.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function baseConfig(extra: Record<string, unknown> = {}): Record<string, any> {
  return {
    server: { listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url }],
    upstreams: { quarantine: quarantine.url },
    ...extra,
  };
}

interface Running {
  gw: Gateway;
  dir: string;
  logs: Record<string, any>[];
  write(config: Record<string, unknown>): void;
  writePolicy(name: string, text: string): void;
  as(sub: string): Promise<{ status: number; json(): any }>;
}

async function start(config: Record<string, unknown>, policies: Record<string, string> = {}): Promise<Running> {
  const dir = mkdtempSync(join(tmpdir(), 'ztgw-reload-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'policies'));
  for (const [name, text] of Object.entries(policies)) writeFileSync(join(dir, 'policies', name), text);
  const file = join(dir, 'ztgw.yaml');
  const write = (c: Record<string, unknown>) => writeFileSync(file, stringify(c));
  write(config);
  const logs: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });
  const gw = await startGateway({ source: { file, env: {} }, logDestination: sink });
  return {
    gw,
    dir,
    logs,
    write,
    writePolicy: (name, text) => writeFileSync(join(dir, 'policies', name), text),
    as: (sub) => rawRequest(gw.url, '/code/repo', { headers: { authorization: `Bearer ${tokens[sub]}` } }),
  };
}

const readyz = async (gw: Gateway) => (await rawRequest(gw.adminUrl, '/readyz')).json();
const metrics = async (gw: Gateway) => (await rawRequest(gw.adminUrl, '/metrics')).text;

async function until(done: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('a reload applies the policies section it adds or removes', () => {
  it('adding a deny-all set denies; removing the section allows again', async () => {
    const r = await start(baseConfig(), { 'deny.yaml': DENY_ALL });
    try {
      expect((await r.as('alice')).status).toBe(200);
      r.write(baseConfig({ policies: { dir: 'policies' } }));
      expect(await r.gw.reload()).toBeUndefined();
      expect((await r.as('alice')).status).toBe(403);
      expect((await readyz(r.gw)).checks.find((c: { name: string }) => c.name === 'policies')?.detail).toMatch(/^set [0-9a-f]{12}/);
      r.write(baseConfig());
      expect(await r.gw.reload()).toBeUndefined();
      expect((await r.as('alice')).status).toBe(200);
    } finally {
      await r.gw.close();
    }
  }, 20_000);
});

describe('a reload that breaks a cross-reference is refused whole', () => {
  it('removing an upstream a live policy names keeps the last good config, says file:line, counts it, serves on', async () => {
    const r = await start(baseConfig({ policies: { dir: 'policies' } }), { 'code.yaml': ALLOW_ENG });
    try {
      const before = r.gw.holder.current;
      expect((await r.as('carol')).status).toBe(200);
      r.write(baseConfig({ policies: { dir: 'policies' }, upstreams: {}, routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 1234 }] }));
      const err = await r.gw.reload();
      expect(err?.message).toMatch(/code\.yaml:\d+:\d+.*quarantine/s);
      expect(r.gw.holder.current).toBe(before); // nothing of it applied, not even the route's timeout
      const ready = await readyz(r.gw);
      expect(ready.status).toBe('ready');
      expect(ready.lastReloadError).toMatch(/code\.yaml:\d+:\d+/);
      expect(await metrics(r.gw)).toMatch(/ztgw_config_reloads_total\{result="failed"\} 1/);
      const carol = await r.as('carol');
      expect(carol.status).toBe(200);
      expect(quarantine.requests.length).toBeGreaterThan(0);
      expect((await r.as('alice')).status).toBe(200);
    } finally {
      await r.gw.close();
    }
  }, 20_000);

  it('a config that does not compile never lets the policy edit made with it in', async () => {
    const r = await start(baseConfig({ policies: { dir: 'policies', reloadDebounceMs: 10_000 } }), { 'code.yaml': ALLOW_ENG });
    try {
      r.writePolicy('deny.yaml', DENY_ALL);
      r.write({ ...baseConfig({ policies: { dir: 'policies' } }), routes: [{ name: 'code', pathPrefix: '/code/', upstream: 'not a url' }] });
      expect(await r.gw.reload()).toBeInstanceOf(Error);
      expect((await r.as('alice')).status).toBe(200);
    } finally {
      await r.gw.close();
    }
  }, 20_000);

  it('a policy edit is checked against the running config: an upstream added by a reload may be named', async () => {
    const extra = await startEchoServer();
    const r = await start(baseConfig({ policies: { dir: 'policies', reloadDebounceMs: 50 } }), { 'code.yaml': ALLOW_ENG });
    try {
      r.write(baseConfig({ policies: { dir: 'policies', reloadDebounceMs: 50 }, upstreams: { quarantine: quarantine.url, extra: extra.url } }));
      expect(await r.gw.reload()).toBeUndefined();
      r.writePolicy('extra.yaml', TO_EXTRA);
      await until(async () => (await r.as('sam')).status === 200, 'the edit naming the new upstream to apply');
      expect(extra.requests.length).toBeGreaterThan(0);
    } finally {
      await r.gw.close();
      await extra.close();
    }
  }, 20_000);
});

describe('reloads are serialised', () => {
  it('two reloads at once both finish, one after the other, and the last written config wins', async () => {
    const r = await start(baseConfig());
    try {
      r.write(baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 1111 }] }));
      const first = r.gw.reload();
      r.write(baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 2222 }] }));
      const second = r.gw.reload();
      expect(await Promise.all([first, second])).toEqual([undefined, undefined]);
      expect(r.gw.holder.current.routes[0]!.timeoutMs).toBe(2222);
    } finally {
      await r.gw.close();
    }
  }, 20_000);
});

describe('unchanged parts are reused across a reload', () => {
  it('keeps the issuers (their JWKS) and the DPoP verifier when their sections did not change; rebuilds them when they did', async () => {
    const r = await start(baseConfig());
    try {
      expect((await r.as('alice')).status).toBe(200);
      const hits = jwks.hits;
      const before = r.gw.holder.current;
      r.write(baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 4321 }] }));
      expect(await r.gw.reload()).toBeUndefined();
      expect(r.gw.holder.current).not.toBe(before);
      expect(r.gw.holder.current.issuers[0]).toBe(before.issuers[0]);
      expect(r.gw.holder.current.parts.tokenCache).toBe(before.parts.tokenCache);
      expect(r.gw.holder.current.parts.dpop).toBe(before.parts.dpop);
      expect((await r.as('alice')).status).toBe(200);
      expect(jwks.hits).toBe(hits); // neither a new key set nor a fresh verification

      const issuers = [{ ...baseConfig().identity.issuers[0], clockToleranceS: 5 }];
      r.write(baseConfig({ identity: { issuers } }));
      expect(await r.gw.reload()).toBeUndefined();
      expect(r.gw.holder.current.issuers[0]).not.toBe(before.issuers[0]);
      expect(r.gw.holder.current.parts.tokenCache).not.toBe(before.parts.tokenCache);
    } finally {
      await r.gw.close();
    }
  }, 20_000);

  it('keeps the assertion signer and its reusable assertions while the assertion section and keys are the same', async () => {
    const r = await start(baseConfig());
    const assertion = async (): Promise<string> => (await r.as('alice')).json().headers['x-zt-assertion'];
    try {
      const first = await assertion();
      expect(first).toMatch(/^ey/);
      const before = r.gw.holder.current;
      r.write(baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 4321 }] }));
      expect(await r.gw.reload()).toBeUndefined();
      expect(r.gw.holder.current.parts.assertions).toBe(before.parts.assertions);
      expect(await assertion()).toBe(first); // the same signature, not a new one per principal after every reload

      r.write(baseConfig({ assertion: { lifetimeS: 30 } }));
      expect(await r.gw.reload()).toBeUndefined();
      expect(r.gw.holder.current.parts.assertions).not.toBe(before.parts.assertions);
      expect(await assertion()).not.toBe(first);
    } finally {
      await r.gw.close();
    }
  }, 20_000);
});

describe('fields a reload cannot apply are reported as needing a restart', () => {
  it('a changed listen port and log level: the rest applies, the fields are named in the log, /readyz and metrics', async () => {
    const r = await start(baseConfig());
    try {
      const port = Number(new URL(r.gw.url).port);
      const next = baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 777 }] });
      next.server = { ...next.server, listen: { host: '127.0.0.1', port: port + 1 }, logLevel: 'debug' };
      r.write(next);
      expect(await r.gw.reload()).toBeUndefined();
      expect(r.gw.holder.current.routes[0]!.timeoutMs).toBe(777);
      const ready = await readyz(r.gw);
      expect(ready.restartRequired).toEqual(expect.arrayContaining(['server.listen', 'server.logLevel']));
      expect(await metrics(r.gw)).toMatch(/ztgw_config_restart_required 1/);
      expect(r.logs.find((l) => l.msg?.includes('restart required'))?.fields).toEqual(expect.arrayContaining(['server.listen']));
      expect(r.logs.findLast((l) => l.msg === 'config reloaded')).toBeDefined();
      // Reverting them clears the report.
      r.write(baseConfig({ routes: [{ name: 'code', pathPrefix: '/code/', upstream: echo.url, timeoutMs: 777 }] }));
      expect(await r.gw.reload()).toBeUndefined();
      expect((await readyz(r.gw)).restartRequired).toBeUndefined();
      expect(await metrics(r.gw)).toMatch(/ztgw_config_restart_required 0/);
    } finally {
      await r.gw.close();
    }
  }, 20_000);
});

describe('TLS certificate files are re-read on reload', () => {
  const peerThumbprint = (url: string) =>
    new Promise<string>((resolve, reject) => {
      const { port } = new URL(url);
      const socket = connect({ host: '127.0.0.1', port: Number(port), rejectUnauthorized: false }, () => {
        const cert = socket.getPeerCertificate();
        socket.destroy();
        resolve(certThumbprint(`-----BEGIN CERTIFICATE-----\n${cert.raw.toString('base64')}\n-----END CERTIFICATE-----\n`));
      });
      socket.on('error', reject);
    });

  it('a rotated certificate is served to new connections; a broken one refuses the reload and keeps the old', async () => {
    const ca = createDeviceCa('reload test CA');
    const first = createServerCert(ca, ['127.0.0.1']);
    const second = createServerCert(ca, ['127.0.0.1']);
    const config = baseConfig();
    config.server = { ...config.server, tls: { certFile: 'cert.pem', keyFile: 'key.pem' } };
    const dir = mkdtempSync(join(tmpdir(), 'ztgw-reload-tls-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'cert.pem'), first.certPem);
    writeFileSync(join(dir, 'key.pem'), first.keyPem);
    const file = join(dir, 'ztgw.yaml');
    writeFileSync(file, stringify(config));
    const sink = new Writable({ write: (_c, _e, done) => done() });
    const gw = await startGateway({ source: { file, env: {} }, logDestination: sink });
    try {
      expect(await peerThumbprint(gw.url)).toBe(first.thumbprint);
      writeFileSync(join(dir, 'cert.pem'), second.certPem);
      writeFileSync(join(dir, 'key.pem'), second.keyPem);
      expect(await gw.reload()).toBeUndefined();
      expect(await peerThumbprint(gw.url)).toBe(second.thumbprint);

      writeFileSync(join(dir, 'cert.pem'), 'not a certificate');
      const err = await gw.reload();
      expect(err?.message).toMatch(/cert\.pem/);
      expect(await peerThumbprint(gw.url)).toBe(second.thumbprint);
    } finally {
      await gw.close();
    }
  }, 20_000);
});
