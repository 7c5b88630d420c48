// Headers an upstream might trust, attacked over raw sockets (names in any case, repeated,
// spelled with '_', named in Connection): none of the deny list reaches the upstream, the
// policy decides on exactly the headers the upstream gets, a route can opt in to one, and
// X-Forwarded-Host is the gateway's configured origin, never the client's Host.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { DENY_GROUPS } from '../../src/upstream/header-deny-list.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { netRequest, type NetResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.headers.test/';
const AUD = 'zt-gateway';

// A policy that allows on a header value: if the policy and the upstream could see different
// values, this is the rule an attacker would aim at.
const TENANT_POLICY = `apiVersion: zt-gateway/v1
name: tenant
appliesTo: { routes: [tenant, optin] }
rules:
  - name: acme-only
    effect: allow
    when: 'request.headers["x-tenant"] == "acme"'
  - name: good-agents
    effect: allow
    when: 'request.headers["user-agent"] == "good-agent"'
  # A rule written as if the gateway sat behind oauth2-proxy: it must never match, since the
  # header is on the deny list and the upstream would not get it either.
  - name: trusts-a-proxy-header
    effect: allow
    when: 'request.headers["x-forwarded-user"] == "admin" || request.headers["remote-user"] == "admin"'
`;
const OPEN_POLICY = `apiVersion: zt-gateway/v1
name: open
appliesTo: { routes: [echo, raw] }
rules:
  - name: anyone
    effect: allow
    when: has(identity.sub)
`;

/** An upstream that keeps the header lines exactly as they arrived (names, case, repeats). */
async function startRawUpstream() {
  const seen: string[][] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.rawHeaders);
    req.resume();
    req.on('end', () => res.end('{}'));
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, close: () => new Promise((r) => server.close(r)) };
}

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let raw: Awaited<ReturnType<typeof startRawUpstream>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let dir: string;
let bearer: string;

const issuers = () => [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-attack-headers-'));
  writeFileSync(join(dir, 'tenant.yaml'), TENANT_POLICY);
  writeFileSync(join(dir, 'open.yaml'), OPEN_POLICY);
  echo = await startEchoServer();
  raw = await startRawUpstream();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    server: { stripHeaders: ['x-employee-id'] },
    identity: { issuers: issuers() },
    routes: [
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
      { name: 'tenant', pathPrefix: '/tenant/', upstream: echo.url },
      { name: 'raw', pathPrefix: '/raw/', upstream: raw.url },
      { name: 'optin', pathPrefix: '/optin/', upstream: echo.url, forwardHeaders: ['X-Forwarded-Prefix', 'remote-user', 'x-employee-id', 'x-tenant'] },
    ],
    policies: { dir, decisionLog: { allowSampleRate: 1 } },
  });
  bearer = `Authorization: Bearer ${await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' })}`;
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
  await raw?.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  echo.requests.length = 0;
  raw.seen.length = 0;
});

const send = (target: string, lines: string[], base = gw.url): Promise<NetResponse> => netRequest(base, { target, lines: [bearer, ...lines] });

/** Every name on the list, and for a prefix one name under it. */
const denied: string[] = DENY_GROUPS.flatMap((g) => [...(g.names ?? []), ...(g.prefixes ?? []).map((p) => `${p}spoofed`)]);

/** The same name as a client might spell it. */
const spellings = (name: string): string[] => [
  name,
  name.toUpperCase(),
  name.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase()),
];

describe('the deny list', () => {
  it('has the groups the issue names', () => {
    for (const name of [
      'x-forwarded-email', 'x-forwarded-groups', 'x-forwarded-preferred-username', 'x-forwarded-access-token', 'x-forwarded-user',
      'remote-user', 'x-remote-user', 'x-authenticated-user', 'x-webauth-user', 'impersonate-user', 'impersonate-group', 'impersonate-uid',
      'x-forwarded-client-cert', 'true-client-ip', 'cf-connecting-ip', 'x-client-ip', 'x-real-ip', 'x-cluster-client-ip', 'fastly-client-ip',
      'x-originating-ip', 'x-original-uri', 'x-original-url', 'x-rewrite-url', 'x-http-method-override', 'x-method-override', 'x-http-method',
      'x-goog-iap-jwt-assertion', 'forwarded',
    ]) {
      expect(denied, name).toContain(name);
    }
    for (const prefix of ['x-auth-request-', 'cf-access-', 'x-goog-authenticated-user-', 'x-amzn-oidc-', 'x-pomerium-', 'impersonate-extra-', 'x-ssl-client-', 'ssl-client-', 'x-envoy-', 'x-forwarded-', 'x-zt-']) {
      expect(DENY_GROUPS.some((g) => g.prefixes?.includes(prefix)), prefix).toBe(true);
    }
  });

  // Sent in three batches (each under the header size limit), every spelling of every name.
  for (const [i, batch] of [0, 1, 2].map((k) => [k, denied.filter((_n, j) => j % 3 === k)] as const)) {
    it(`strips every deny-listed header in any case (batch ${i + 1})`, async () => {
      const lines = batch.flatMap((name) => spellings(name).map((s, j) => `${s}: spoof-${j}`));
      const res = await send('/echo/x', lines);
      expect(res.status, res.body).toBe(200);
      const seen = echo.requests[0]!.headers;
      for (const name of batch) {
        if (name === 'x-forwarded-for' || name === 'x-forwarded-proto' || name === 'x-forwarded-host' || name === 'x-request-id') continue;
        expect(seen[name], name).toBeUndefined();
      }
      for (const value of Object.values(seen)) expect(String(value)).not.toMatch(/spoof-/);
      // the gateway's own, written from what it knows
      expect(seen['x-forwarded-for']).toBe('127.0.0.1');
      expect(seen['x-forwarded-proto']).toBe('http');
      expect(seen['x-forwarded-host']).toBe(new URL(gw.url).host);
      expect(seen['x-request-id']).toBe(res.headers['x-request-id']);
    });
  }

  it('strips what other identity-aware proxies, ingresses and IP libraries set (found in a black-box run)', async () => {
    const lines = [
      'X-Authentik-Username: root', 'X-Authentik-Groups: admins', 'X-Authentik-Jwt: a.b.c', 'X-Remote-Extra-Scopes: all',
      'X-MS-CLIENT-PRINCIPAL: eyJ9', 'X-MS-CLIENT-PRINCIPAL-NAME: root', 'X-MS-TOKEN-AAD-ACCESS-TOKEN: t', 'Tailscale-User-Login: root@x',
      'X-Vouch-User: root', 'Gap-Auth: root', 'X-Id-Token: a.b.c', 'X-Access-Token: t', 'X-Original-Forwarded-For: 10.0.0.1',
      'X-ProxyUser-Ip: 10.0.0.1', 'Forwarded-For: 10.0.0.1', 'X-Tls-Client-Cert: MII', 'X-Client-Certificate: MII',
    ];
    const res = await send('/echo/x', lines);
    expect(res.status, res.body).toBe(200);
    const seen = echo.requests[0]!.headers;
    for (const line of lines) expect(seen[line.slice(0, line.indexOf(':')).toLowerCase()], line).toBeUndefined();
  });

  it('strips server.stripHeaders and the assertion header the client sent, and sends its own assertion', async () => {
    await send('/echo/x', ['X-Employee-Id: 1', 'X-ZT-Assertion: forged.jwt.here', 'x-zt-assertion: forged2']);
    const seen = echo.requests[0]!.headers;
    expect(seen['x-employee-id']).toBeUndefined();
    expect(seen['x-zt-assertion']).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(seen['x-zt-assertion']).not.toContain('forged');
  });

  it('keeps ordinary headers', async () => {
    await send('/echo/x', ['Accept: text/plain', 'X-Custom: 1', 'Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01']);
    const seen = echo.requests[0]!.headers;
    expect(seen).toMatchObject({ accept: 'text/plain', 'x-custom': '1', traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' });
  });

  it('a method override does not reach the upstream: what the policy saw as GET stays GET', async () => {
    await send('/echo/x', ['X-HTTP-Method-Override: DELETE', 'X-Method-Override: DELETE', 'X-HTTP-Method: DELETE']);
    const rec = echo.requests[0]!;
    expect(rec.method).toBe('GET');
    expect(Object.keys(rec.headers).filter((n) => n.includes('method'))).toEqual([]);
  });
});

describe('header names with underscores (CGI, WSGI, Rack and PHP-FPM read them as dashes)', () => {
  const names = ['X_ZT_Assertion', 'X_Remote_User', 'x_forwarded_for', 'X-Forwarded_Email', 'Authorization_', 'X_Auth_Request_User', 'Remote_User', 'HTTP_X_REMOTE_USER', 'x_tenant', '_'];

  it('drops them by default: none reaches the upstream, and the gateway still sets its own', async () => {
    const res = await send('/raw/x', names.map((n) => `${n}: evil`));
    expect(res.status).toBe(200);
    const lines = raw.seen[0]!;
    const sent = lines.filter((_v, i) => i % 2 === 0);
    expect(sent.filter((n) => n.includes('_'))).toEqual([]);
    expect(lines.filter((_v, i) => i % 2 === 1 && lines[i] === 'evil')).toEqual([]);
  });

  it('a policy cannot be satisfied by one either', async () => {
    const res = await send('/tenant/x', ['X_Tenant: acme', 'x_tenant: acme']);
    expect(res.status).toBe(403);
    expect(echo.requests).toHaveLength(0);
  });

  it("refuses them with 400 under headersWithUnderscores: 'reject'", async () => {
    const strict = await startTestGateway({
      server: { headersWithUnderscores: 'reject' },
      identity: { issuers: issuers() },
      routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
    });
    try {
      for (const name of names) {
        const res = await send('/echo/x', [`${name}: 1`], strict.url);
        expect(res.status, name).toBe(400);
        expect(res.json().code, name).toBe('ERR_BAD_REQUEST');
      }
      expect(echo.requests).toHaveLength(0);
      expect((await send('/echo/x', ['X-Fine: 1'], strict.url)).status).toBe(200);
    } finally {
      await strict.close();
    }
  });
});

describe('the policy sees what the upstream gets', () => {
  it('allows on a header the upstream receives', async () => {
    const res = await send('/tenant/x', ['X-Tenant: acme']);
    expect(res.status).toBe(200);
    expect(echo.requests[0]!.headers['x-tenant']).toBe('acme');
  });

  it.each([
    ['Connection: x-tenant'],
    ['Connection: close, X-Tenant'],
    ['Connection: keep-alive', 'Connection: X-TENANT'],
  ])('a header named in Connection (%s) is neither seen by the policy nor forwarded', async (...connection) => {
    const res = await send('/tenant/x', ['X-Tenant: acme', ...connection]);
    expect(res.status).toBe(403);
    expect(res.json().code).toBe('ERR_ACCESS_DENIED');
    expect(echo.requests).toHaveLength(0);
  });

  it('a repeated header reads as one joined value for both: acme, evil is not acme', async () => {
    const res = await send('/tenant/x', ['X-Tenant: acme', 'x-tenant: evil']);
    expect(res.status).toBe(403);
    const reversed = await send('/tenant/x', ['X-Tenant: evil', 'X-TENANT: acme']);
    expect(reversed.status).toBe(403);
    expect(echo.requests).toHaveLength(0);
  });

  it('a header Node keeps the first of (User-Agent) reaches the upstream once, with the value the policy allowed', async () => {
    // The raw upstream shows every line the gateway sent: one User-Agent, the first.
    const gwRaw = await startTestGateway({
      identity: { issuers: issuers() },
      // the policies name these routes; only /tenant/ is used, towards the raw upstream
      routes: ['echo', 'raw', 'optin', 'tenant'].map((name) => ({ name, pathPrefix: `/${name}/`, upstream: raw.url })),
      policies: { dir, decisionLog: { allowSampleRate: 1 } },
    });
    try {
      const res = await send('/tenant/x', ['User-Agent: good-agent', 'User-Agent: evil-agent'], gwRaw.url);
      expect(res.status).toBe(200);
      const lines = raw.seen[0]!;
      const agents = lines.filter((_v, i) => i % 2 === 1 && lines[i - 1]!.toLowerCase() === 'user-agent');
      expect(agents).toEqual(['good-agent']);
      const denied = await send('/tenant/x', ['User-Agent: evil-agent', 'User-Agent: good-agent'], gwRaw.url);
      expect(denied.status).toBe(403);
      expect(raw.seen).toHaveLength(1);
    } finally {
      await gwRaw.close();
    }
  });

  it('a deny-listed header the policy might read is invisible to it', async () => {
    const denied = await send('/tenant/x', ['X-Forwarded-User: admin', 'Remote-User: admin']);
    expect(denied.status).toBe(403);
    expect(echo.requests).toHaveLength(0);
    // …unless the route forwards it, and then the policy sees it because the upstream gets it.
    const optin = await send('/optin/x', ['Remote-User: admin']);
    expect(optin.status).toBe(200);
    expect(echo.requests[0]!.headers['remote-user']).toBe('admin');
    echo.requests.length = 0;
    const res = await send('/tenant/x', ['X-Tenant: acme', 'X-Forwarded-User: admin', 'Remote-User: admin']);
    expect(res.status).toBe(200);
    const seen = echo.requests[0]!.headers;
    expect(seen['x-forwarded-user']).toBeUndefined();
    expect(seen['remote-user']).toBeUndefined();
  });
});

describe('a route opts in to a named header', () => {
  it('forwards exactly the named ones, any case, and still strips the rest', async () => {
    const res = await send('/optin/x', ['X-Forwarded-Prefix: /app', 'REMOTE-USER: svc', 'X-Employee-Id: 7', 'X-Forwarded-Email: a@b', 'X-Tenant: acme', 'X-Real-IP: 6.6.6.6']);
    expect(res.status).toBe(200);
    const seen = echo.requests[0]!.headers;
    expect(seen).toMatchObject({ 'x-forwarded-prefix': '/app', 'remote-user': 'svc', 'x-employee-id': '7' });
    expect(seen['x-forwarded-email']).toBeUndefined();
    expect(seen['x-real-ip']).toBeUndefined();
  });

  it('the same header on a route without the opt-in is stripped', async () => {
    await send('/echo/x', ['X-Forwarded-Prefix: /app', 'Remote-User: svc']);
    expect(echo.requests[0]!.headers['x-forwarded-prefix']).toBeUndefined();
    expect(echo.requests[0]!.headers['remote-user']).toBeUndefined();
  });

  it.each(['x-forwarded-for', 'X-Forwarded-Host', 'x-forwarded-proto', 'x-request-id', 'x-zt-assertion', 'connection', 'upgrade', 'transfer-encoding', 'host'])(
    'refuses a config that forwards %s, saying why',
    async (name) => {
      await expect(
        startTestGateway({ identity: { issuers: issuers() }, routes: [{ name: 'r', pathPrefix: '/r/', upstream: echo.url, forwardHeaders: [name] }] }),
      ).rejects.toThrow(/forwardHeaders.*cannot forward|cannot forward/s);
    },
  );
});

describe('X-Forwarded-Host is the configured origin, never the client Host', () => {
  it('without publicOrigins, a Host that is not the address the client connected to is 421', async () => {
    const port = new URL(gw.url).port;
    for (const host of ['evil.example', `evil.example:${port}`, `127.0.0.2:${port}`, '127.0.0.1', `127.0.0.1:${Number(port) + 1}`]) {
      const res = await send('/echo/x', [`Host: ${host}`]);
      expect(res.status, host).toBe(421);
      expect(res.json().code, host).toBe('ERR_MISDIRECTED_REQUEST');
    }
    expect(echo.requests).toHaveLength(0);
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`]) {
      const res = await send('/echo/x', [`Host: ${host}`, 'X-Forwarded-Host: evil.example']);
      expect(res.status, host).toBe(200);
      expect(res.json().headers['x-forwarded-host']).toBe(host.toLowerCase());
    }
  });

  it('with publicOrigins and route hosts: only those, and the upstream gets the configured host', async () => {
    const g = await startTestGateway({
      server: { publicOrigins: ['http://gw.example.test', 'https://gw.example.test:8443'], trustedProxies: ['loopback'] },
      identity: { issuers: issuers() },
      routes: [
        { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
        { name: 'app', pathPrefix: '/app/', upstream: echo.url, hosts: ['app.example.test'] },
      ],
    });
    try {
      const port = new URL(g.url).port;
      // A direct-looking client (loopback is a trusted proxy here, so X-Forwarded-Host counts
      // when sent; without it, Host does).
      const ok = await send('/echo/x', ['Host: GW.example.test'], g.url);
      expect(ok.status).toBe(200);
      expect(ok.json().headers['x-forwarded-host']).toBe('gw.example.test');
      const app = await send('/app/x', ['Host: app.example.test:80'], g.url);
      expect(app.json().headers['x-forwarded-host']).toBe('app.example.test');
      const viaProxy = await send('/echo/x', ['Host: internal', 'X-Forwarded-Host: gw.example.test:8443', 'X-Forwarded-Proto: https'], g.url);
      expect(viaProxy.status).toBe(200);
      expect(viaProxy.json().headers).toMatchObject({ 'x-forwarded-host': 'gw.example.test:8443', 'x-forwarded-proto': 'https' });
      echo.requests.length = 0;
      for (const lines of [
        [`Host: 127.0.0.1:${port}`], // the loopback default is off once publicOrigins is set
        ['Host: evil.example'],
        ['Host: gw.example.test:8443'], // that origin is https; this listener is http
        ['Host: app.example.test:8080'], // route hosts on the default port only
        ['Host: gw.example.test', 'X-Forwarded-Host: evil.example'],
        ['Host: gw.example.test', 'X-Forwarded-Host: gw.example.test', 'X-Forwarded-Proto: https'],
      ]) {
        const res = await send('/echo/x', lines, g.url);
        expect(res.status, lines.join(' | ')).toBe(421);
      }
      expect(echo.requests).toHaveLength(0);
    } finally {
      await g.close();
    }
  });
});
