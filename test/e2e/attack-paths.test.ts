// Path confusion, attacked over raw sockets: every request target below is written byte for
// byte. A refusal is a 400 problem with ERR_BAD_PATH before routing, and nothing reaches the
// upstream; names that merely start with dots are forwarded; no target gives a 5xx; and what
// is forwarded is a fixed point of the gateway's own normalisation (the upstream cannot read
// it differently by normalising again).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer } from '../../src/dev/issuer.ts';
import { normalisePath } from '../../src/pipeline/hygiene.ts';
import { serveJwks } from '../helpers/jwks-server.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { netRequest, type NetResponse } from '../helpers/raw-socket.ts';

const ISS = 'https://idp.paths.test/';
const AUD = 'zt-gateway';

let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Awaited<ReturnType<typeof createIssuer>>;
let jwks: Awaited<ReturnType<typeof serveJwks>>;
let gw: TestGateway;
let bearer: string;

beforeAll(async () => {
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: ISS, alg: 'ES256' });
  jwks = await serveJwks(() => idp.publicJwks());
  gw = await startTestGateway({
    identity: { issuers: [{ name: 'corp', issuer: ISS, audiences: [AUD], algorithms: ['ES256'], jwksUrl: jwks.url }] },
    routes: [
      { name: 'echo', pathPrefix: '/echo/', upstream: echo.url },
      { name: 'admin', pathPrefix: '/admin/', upstream: echo.url },
      { name: 'public', pathPrefix: '/public/', upstream: echo.url, public: true },
      { name: 'strip', pathPrefix: '/strip/', upstream: `${echo.url}/base/`, stripPrefix: true, public: true },
    ],
  });
  bearer = `Authorization: Bearer ${await idp.sign({}, { sub: 'alice', aud: AUD, expiresIn: '10m' })}`;
});

afterAll(async () => {
  await gw?.close();
  await jwks?.close();
  await echo?.close();
});

beforeEach(() => {
  echo.requests.length = 0;
});

const send = (target: string, method = 'GET'): Promise<NetResponse> => netRequest(gw.url, { method, target, lines: [bearer] });

function expectBadPath(res: NetResponse, target: string): void {
  expect(res.status, target).toBe(400);
  expect(res.headers['content-type'], target).toMatch(/^application\/problem\+json/);
  expect(res.json().code, target).toBe('ERR_BAD_PATH');
  expect(echo.requests, target).toHaveLength(0);
}

describe('dot segments, by every spelling', () => {
  const refused = [
    // plain dot segments, also those that stay inside their route: refused, not resolved
    '/echo/a/../b',
    '/echo/./a',
    '/echo/a/.',
    '/echo/a/..',
    '/echo/..',
    '/public/../admin/x',
    '/public/x/../../admin/x',
    '/echo//..//admin/x',
    '/..',
    '/./echo/x',
    // path parameters a servlet container strips before resolving
    '/public/..;/admin/x',
    '/public/..;jsessionid=1/admin/x',
    '/public/.;/x',
    '/public/..%3b/admin/x',
    '/public/..%3B/admin/x',
    '/public/.%3b/x',
    // escaped, double-escaped, mixed case
    '/public/%2e%2e/admin/x',
    '/public/%2E%2E/admin/x',
    '/public/.%2e/admin/x',
    '/public/%2e./admin/x',
    '/public/%2e/x',
    '/public/%252e%252e/admin/x',
    '/public/%252E%252E/admin/x',
    '/public/%2525252e/x',
    '/public/..%252f..%252fadmin/x',
    '/public/..%252Fadmin',
    '/public/..%255cadmin',
    '/public/..%255Cadmin',
    // escaped twice where the inner escape is itself spelt with escapes: %25%32%65 decodes to %252e
    '/public/%25%32%65%25%32%65/admin/x',
    '/public/%25%32%45%25%32%45/admin/x',
    '/public/..%25%32%66..%25%32%66admin',
    '/public/..%25%35%63admin',
    '/public/..%25%33%42/admin',
    '/public/..%253b/admin',
    '/public/%25%32%35%32%65/x',
    '/public/..%2fadmin/x',
    '/public/..%2Fadmin/x',
    '/public/..%5cadmin',
    // Unicode look-alikes NFKC turns into dots and slashes (fullwidth, small full stop, one dot leader)
    '/public/%ef%bc%8e%ef%bc%8e%ef%bc%8fadmin/x',
    '/public/%EF%BC%8E%EF%BC%8E/admin/x',
    '/public/%ef%b9%92%ef%b9%92/admin/x',
    '/public/%e2%80%a4%e2%80%a4/admin/x',
    '/public/x%ef%bc%8fy',
    // overlong and otherwise broken UTF-8, IIS %u escapes
    '/public/%c0%ae%c0%ae/admin/x',
    '/public/%C0%AE%C0%AE/admin/x',
    '/public/%c0%af',
    '/public/%e0%80%ae%e0%80%ae/admin',
    '/public/%f0%80%80%ae',
    '/public/%u002e%u002e/admin/x',
    '/public/%U002E',
    '/public/%ff',
    '/public/%ed%a0%80',
    // Windows trims trailing spaces and dots
    '/public/..%20/admin/x',
    '/public/.%20%20/x',
    // separators and controls
    '/public/..\\admin\\x',
    '/public/%5c..%5cadmin',
    '/public/%00',
    '/public/x%00.json',
    '/public/%0d%0aSet-Cookie:%20a=b',
    '/public/a%',
    '/public/a%g1',
    // not origin-form
    'http://127.0.0.1/public/x',
    'HTTP://127.0.0.1/public/x',
    '//public/../admin/x',
  ];
  for (const target of refused) {
    it(`refuses ${target}`, async () => expectBadPath(await send(target), target));
  }

  it('refuses a dot segment with a query and a path-looking query alike', async () => {
    expectBadPath(await send('/echo/a/../b?x=1'), 'query');
    expectBadPath(await send('/echo/x?a#/../admin'), 'fragment in query');
  });

  it('refuses a relative target (the framework answers it, still as a problem)', async () => {
    const res = await send('public/x');
    expect(res.status).toBe(400);
    expect(echo.requests).toHaveLength(0);
  });

  it('refuses OPTIONS * (asterisk-form) without routing it', async () => {
    const res = await send('*', 'OPTIONS');
    expect(res.status).toBeLessThan(500);
    expect(echo.requests).toHaveLength(0);
  });
});

describe('names that start or end with dots are names', () => {
  const forwarded: [string, string][] = [
    ['/public/...', '/public/...'],
    ['/public/..x', '/public/..x'],
    ['/public/...x/y', '/public/...x/y'],
    ['/public/x..', '/public/x..'],
    ['/public/x../y', '/public/x../y'],
    ['/public/.well-known/openid-configuration', '/public/.well-known/openid-configuration'],
    ['/public/.x', '/public/.x'],
    ['/public/..../', '/public/..../'],
    ['/public/a/...;v=1', '/public/a/...;v=1'],
    ['/public/a;..', '/public/a;..'],
    ['/public/[...slug]', '/public/[...slug]'],
    ['/strip/...', '/base/...'],
    ['/strip/..x/...', '/base/..x/...'],
    ['/echo/.../x', '/echo/.../x'],
  ];
  for (const [target, upstream] of forwarded) {
    it(`forwards ${target} as ${upstream}`, async () => {
      const res = await send(target);
      expect(res.status, res.body).toBe(200);
      expect(res.json().url).toBe(upstream);
      expect(echo.requests).toHaveLength(1);
    });
  }

  it('forwards the characters RFC 3986 wants escaped escaped, as the policy saw them', async () => {
    const res = await send('/public/{a}|b^c`d"e');
    expect(res.status).toBe(200);
    expect(res.json().url).toBe('/public/%7Ba%7D%7Cb%5Ec%60d%22e');
  });

  it('merges duplicate slashes and decodes escaped unreserved characters', async () => {
    const res = await send('/public//a///%7e%41');
    expect(res.json().url).toBe('/public/a/~A');
  });
});

describe('path parameters that would change the route', () => {
  it.each(['/admin;x/secret', '/admin;/secret', '/;/admin/x', '/public;x/y', '/public/../admin;/x'])('refuses %s', async (target) => {
    expectBadPath(await send(target), target);
  });

  it('forwards non-ASCII names, composed or not (NFKC changes no path syntax in them)', async () => {
    for (const path of ['/public/caf%C3%A9', '/public/cafe%CC%81', '/public/%E6%97%A5%E6%9C%AC']) {
      const res = await send(path);
      expect(res.status, path).toBe(200);
      expect(res.json().url).toBe(path);
    }
  });

  it('forwards path parameters inside one route', async () => {
    const res = await send('/public/a;v=1/b');
    expect(res.json().url).toBe('/public/a;v=1/b');
  });
});

describe('no path gives a 5xx', () => {
  const atoms = ['/', '//', '.', '..', '...', ';', ';x', '%2e', '%2E', '%2f', '%25', '%252e', '%252F', '%255c', '%c0%ae', '%C3%A9', '%e2%80', '%u002e', '%3b', '%3B', '%20', '%00', '%0a', '%ff', 'a', 'Z', '~', '_', '-', '\\', '{', '}', '|', '"', '<', '>', '^', '`', '[', ']', '%41', '%32', '%65', '%66', '%35', '%63', '%33', '%42', '*', ':', '@', '!', "'", '$', '&', '+', ',', '=', '%', '%g', '?', '#', '?a=/../b', 'x..', '..x', '.well-known', '\u00e9', '\u2025', '\u00ad'];
  const prefixes = ['/public', '/public/', '/echo/', '/strip/', '/admin', '/', '', '*', 'http://x/public/', '//'];
  let seed = 4242;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };

  it('fuzzes random and adversarial targets: never 5xx, forwarded paths re-normalise to themselves', async () => {
    const statuses = new Map<number, number>();
    for (let i = 0; i < 400; i++) {
      let target = prefixes[rand(prefixes.length)]!;
      const n = 1 + rand(10);
      for (let j = 0; j < n; j++) target += atoms[rand(atoms.length)];
      echo.requests.length = 0;
      let res: NetResponse;
      try {
        res = await send(target);
      } catch (err) {
        // Node's parser may close on a target it cannot parse (raw controls); that is not a 5xx.
        expect(String(err), target).toMatch(/closed without a response|ECONNRESET/);
        continue;
      }
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      expect(res.status, `${JSON.stringify(target)} → ${res.body}`).toBeLessThan(500);
      if (res.status === 200) {
        expect(echo.requests, target).toHaveLength(1);
        const url = echo.requests[0]!.url;
        const q = url.indexOf('?');
        const path = q === -1 ? url : url.slice(0, q);
        expect(normalisePath(path), `${target} → ${url}`).toBe(path);
      } else if (res.status === 400) {
        expect(echo.requests, target).toHaveLength(0);
      }
    }
    expect(statuses.get(200) ?? 0).toBeGreaterThan(10);
    expect(statuses.get(400) ?? 0).toBeGreaterThan(20);
  }, 120_000);

  it('huge paths and many segments', async () => {
    const many = '/public' + '/a'.repeat(3000);
    const res = await send(many);
    expect(res.status).toBe(200);
    expect(res.json().url).toBe(many);
    echo.requests.length = 0;
    expectBadPath(await send('/public' + '/a'.repeat(3000) + '/..'), 'many + dot-dot');
    const tooLong = await send('/public/' + 'x'.repeat(64 * 1024));
    expect(tooLong.status).toBe(431); // over maxHeaderBytes: Node's parser, not a 5xx
    const semis = await send('/public/' + ';'.repeat(2000) + '/x;' + 'a;'.repeat(1000));
    expect(semis.status).toBeLessThan(500);
  });
});
