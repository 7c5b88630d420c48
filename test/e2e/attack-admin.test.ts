// DNS rebinding and cross-site requests against the admin plane. A web page on the gateway's
// machine (or in its network) can point a name it owns at 127.0.0.1 or the pod IP: the browser
// then sends that name in Host. Or it targets a real admin address from its own origin: the
// browser adds Origin and Sec-Fetch-Site. Every admin endpoint, known or not, must refuse both
// with a problem document and a request id, before any token check. Raw sockets, so Host and
// Origin are exactly what the attacker's browser would write.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { netRequest, type NetResponse } from '../helpers/raw-socket.ts';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let gw: TestGateway;
let port: string;
const dir = mkdtempSync(join(tmpdir(), 'ztgw-attack-admin-'));
const ADMIN_TOKEN = randomBytes(32).toString('base64url');

// Every endpoint the admin plane has here, an unknown one, and the profiling pair.
const ENDPOINTS = ['/healthz', '/health', '/readyz', '/metrics', '/.well-known/zt-jwks.json', '/debug/profile/cpu?seconds=1', '/debug/profile/heap', '/no-such-endpoint'];

beforeAll(async () => {
  echo = await startEchoServer();
  writeFileSync(join(dir, 'admin-token'), ADMIN_TOKEN);
  const idp = await createIssuer({ issuer: 'https://idp.test.local/' });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(idp.publicJwks()));
  gw = await startTestGateway({
    server: { profiling: true, admin: { tokenFile: join(dir, 'admin-token'), hosts: ['prom.internal.test', '*.mon.internal.test'] } },
    identity: { issuers: [{ name: 'corp', issuer: 'https://idp.test.local/', audiences: ['zt-gateway'], algorithms: ['ES256'], jwksFile: join(dir, 'jwks.json') }] },
    routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: echo.url }],
  });
  port = new URL(gw.adminUrl).port;
});
afterAll(async () => {
  await gw?.close();
  await echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

const send = (target: string, lines: string[]) => netRequest(gw.adminUrl, { target, lines });

function expectRefused(res: NetResponse, status: number, code: string, what: string): void {
  expect(res.status, `${what}: ${res.body}`).toBe(status);
  expect(res.headers['content-type'], what).toMatch(/^application\/problem\+json/);
  const body = res.json();
  expect(body.code, what).toBe(code);
  expect(body.requestId, what).toMatch(/^[0-9a-f-]{36}$/);
  expect(res.headers['x-request-id'], what).toBe(body.requestId);
  // Nothing of the endpoint leaks into a refusal.
  expect(res.body, what).not.toMatch(/ztgw_|"keys"|"checks"|"status":"ok"|"nodes"|"snapshot"/);
}

describe('admin plane: foreign Host (DNS rebinding)', () => {
  const foreignHosts = () => [
    'evil.example',
    'evil.example:9090',
    `evil.example:${port}`,
    `EVIL.example:${port}`,
    `127.0.0.1.nip.io:${port}`,
    `localhost.evil.example:${port}`,
    `prom.internal.test.evil.example:${port}`,
    `mon.internal.test:${port}`, // the wildcard covers subdomains, not the bare name
    `[::1]:${port}`, // loopback, but not the address this socket came in on
    `127.0.0.2:${port}`,
    `2130706433:${port}`, // 127.0.0.1 as one number: a name to us
  ];

  it('refuses every endpoint, known or unknown, with 421 and a request id', async () => {
    for (const host of foreignHosts()) {
      for (const path of ENDPOINTS) {
        expectRefused(await send(path, [`Host: ${host}`]), 421, 'ERR_MISDIRECTED_REQUEST', `${host} ${path}`);
      }
    }
  });

  it('refuses a foreign Host even with the admin token', async () => {
    const res = await send('/debug/profile/cpu?seconds=1', [`Host: evil.example:${port}`, `Authorization: Bearer ${ADMIN_TOKEN}`]);
    expectRefused(res, 421, 'ERR_MISDIRECTED_REQUEST', 'with token');
  });

  it('refuses a second Host line (the first is ours, a proxy in front may read the other) and a malformed Host with 400', async () => {
    for (const lines of [
      [`Host: 127.0.0.1:${port}`, 'Host: evil.example'],
      [`Host: evil@127.0.0.1:${port}`],
      [`Host: 127.0.0.1:${port}, evil.example`],
      [`Host: 127.0.0.1:99999`],
      ['Host: '],
    ]) {
      for (const path of ['/healthz', '/metrics', '/debug/profile/heap']) {
        expectRefused(await send(path, lines), 400, 'ERR_BAD_REQUEST', `${lines.join(' | ')} ${path}`);
      }
    }
  });

  it('refuses a foreign Host before the router refuses a malformed path', async () => {
    expectRefused(await send('/healthz%zz', ['Host: evil.example']), 421, 'ERR_MISDIRECTED_REQUEST', 'foreign host, bad path');
    expectRefused(await send('/healthz%zz', [`Host: 127.0.0.1:${port}`, 'Origin: http://evil.example']), 403, 'ERR_FOREIGN_ORIGIN', 'foreign origin, bad path');
    expectRefused(await send('/healthz%zz', [`Host: 127.0.0.1:${port}`]), 400, 'ERR_BAD_PATH', 'good host, bad path');
  });

  it('counts refusals and logs them at warn', async () => {
    const before = gw.logs.length;
    await send('/metrics', ['Host: rebind.example']);
    const line = gw.logs.slice(before).find((l) => l.msg === 'admin request refused');
    expect(line).toMatchObject({ level: 40, reason: 'host', code: 'ERR_MISDIRECTED_REQUEST', host: 'rebind.example', path: '/metrics' });
    const metrics = await send('/metrics', []);
    expect(metrics.body).toMatch(/ztgw_admin_refusals_total\{reason="host"\} [1-9]/);
  });
});

describe('admin plane: foreign Origin (a web page elsewhere)', () => {
  const foreignOrigins = () => [
    'Origin: http://evil.example',
    `Origin: http://evil.example:${port}`,
    'Origin: null',
    `Origin: http://localhost:${port}`, // another origin than the 127.0.0.1 the request names
    'Origin: http://127.0.0.1:3000', // another port on the same machine: another site
    `Origin: https://127.0.0.1:${port}.evil.example`,
    `Origin: http://127.0.0.1:${port}@evil.example`,
    `Origin: http://127.0.0.1:${port}/path`,
    `Origin: ftp://127.0.0.1:${port}`,
    `Origin: http://127.0.0.1:${port}, http://evil.example`,
    'Sec-Fetch-Site: cross-site',
    'Sec-Fetch-Site: same-site',
    'Sec-Fetch-Site: something-new',
  ];

  it('refuses every endpoint, known or unknown, with 403 even though Host is good', async () => {
    for (const header of foreignOrigins()) {
      for (const path of ENDPOINTS) {
        expectRefused(await send(path, [`Host: 127.0.0.1:${port}`, header]), 403, 'ERR_FOREIGN_ORIGIN', `${header} ${path}`);
      }
    }
  });

  it('refuses a foreign Origin even with the admin token', async () => {
    const res = await send('/debug/profile/heap', [`Host: 127.0.0.1:${port}`, 'Origin: http://evil.example', `Authorization: Bearer ${ADMIN_TOKEN}`]);
    expectRefused(res, 403, 'ERR_FOREIGN_ORIGIN', 'with token');
  });

  it('refuses a same-origin Origin combined with Sec-Fetch-Site: cross-site', async () => {
    const res = await send('/metrics', [`Host: 127.0.0.1:${port}`, `Origin: http://127.0.0.1:${port}`, 'Sec-Fetch-Site: cross-site']);
    expectRefused(res, 403, 'ERR_FOREIGN_ORIGIN', 'mixed');
  });
});

describe('admin plane: the hosts it does answer', () => {
  const goodHosts = () => [
    `127.0.0.1:${port}`,
    `localhost:${port}`,
    `LocalHost:${port}`,
    `localhost.:${port}`,
    '127.0.0.1', // port ignored: a proxy or port-forward in front may change it
    'localhost:1',
    'prom.internal.test',
    `prom.internal.test:${port}`,
    'PROM.internal.test:80',
    'a.mon.internal.test',
    'b.c.mon.internal.test:9090',
  ];

  it('answers the listen address, localhost on loopback and the configured names, any port', async () => {
    for (const host of goodHosts()) {
      const res = await send('/healthz', [`Host: ${host}`]);
      expect(res.status, `${host}: ${res.body}`).toBe(200);
    }
  });

  it('answers a request from its own origin, and one the user typed (Sec-Fetch-Site: none)', async () => {
    for (const lines of [
      [`Host: 127.0.0.1:${port}`, `Origin: http://127.0.0.1:${port}`],
      [`Host: localhost:${port}`, `Origin: http://localhost:${port}`, 'Sec-Fetch-Site: same-origin'],
      ['Host: prom.internal.test', 'Origin: http://prom.internal.test'],
      ['Host: prom.internal.test', 'Origin: https://prom.internal.test'], // TLS ended by a proxy in front
      [`Host: 127.0.0.1:${port}`, 'Sec-Fetch-Site: none'],
    ]) {
      const res = await send('/metrics', lines);
      expect(res.status, `${lines.join(' | ')}: ${res.body}`).toBe(200);
    }
  });

  it('still needs the token for profiles on a good Host: the Host rule is not a credential', async () => {
    expectRefused(await send('/debug/profile/cpu?seconds=1', [`Host: localhost:${port}`]), 401, 'ERR_ADMIN_TOKEN_REQUIRED', 'no token');
    const res = await send('/debug/profile/cpu?seconds=1', [`Host: prom.internal.test`, `Authorization: Bearer ${ADMIN_TOKEN}`]);
    expect(res.status, res.body).toBe(200);
  });

  it('answers an HTTP/1.0 request without Host (old health checkers send those; browsers never do)', async () => {
    const res = await new Promise<string>((resolve, reject) => {
      import('node:net').then(({ connect }) => {
        const socket = connect({ host: '127.0.0.1', port: Number(port) });
        let text = '';
        socket.setEncoding('latin1');
        socket.on('data', (d: string) => (text += d));
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
        socket.write('GET /healthz HTTP/1.0\r\n\r\n');
      }, reject);
    });
    expect(res).toMatch(/^HTTP\/1\.[01] 200 /);
  });
});
