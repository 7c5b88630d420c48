// Item 12 of issue 11, as an attacker tries it: the in-memory DPoP replay cache never
// forgets a live jti. Before, a full cache evicted its oldest live entry, so a client with
// one valid key could flood unique proofs until a captured proof's jti was forgotten, and
// replay it (CVE-2026-41707, Spring Security's DPoP support). Now a full cache, or a key
// holding its share, refuses new proofs (503, Retry-After) and remembers every live jti.
// Proofs are made here with node:crypto (the flood needs thousands, fast); requests are
// raw HTTP/1.1 over one keep-alive socket per flood.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEchoServer } from '../../src/dev/echo.ts';
import { createIssuer, type Issuer } from '../../src/dev/issuer.ts';
import { newDpopKey } from '../helpers/dpop-key.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawRequest } from '../helpers/http.ts';
import { startRedis } from '../helpers/redis.ts';
import { Redis } from 'ioredis';

let dir: string;
let echo: Awaited<ReturnType<typeof startEchoServer>>;
let idp: Issuer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-attack-replay-'));
  echo = await startEchoServer();
  idp = await createIssuer({ issuer: 'https://idp.replay.test/' });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(idp.publicJwks()));
});
afterAll(async () => {
  await echo?.close();
});

/** A DPoP client: its ES256 key, a token bound to it, and proofs minted synchronously (the flood needs thousands). */
interface Client {
  jkt: string;
  token: string;
  proof(htu: string, method?: string): string;
}

async function newClient(sub: string): Promise<Client> {
  const key = newDpopKey();
  const token = await idp.sign({ cnf: { jkt: key.jkt } }, { sub, aud: 'zt-gateway', expiresIn: '10m' });
  return { jkt: key.jkt, token, proof: (htu, method) => key.proof(htu, token, method) };
}

function gatewayConfig(dpop: Record<string, unknown>) {
  return {
    identity: {
      issuers: [{ name: 'idp', issuer: idp.issuer, audiences: ['zt-gateway'], algorithms: ['ES256'], jwksFile: 'jwks.json' }],
      dpop,
    },
    routes: [{ name: 'bound', pathPrefix: '/bound/', upstream: echo.url, device: { binding: 'required' } }],
    devices: { registry: { file: join(dir, `devices-${randomUUID()}.yaml`) } },
  };
}

/**
 * Raw HTTP/1.1 over one keep-alive connection: requests one at a time, each response read
 * by its Content-Length (the gateway's problems and the echo's answers both carry one).
 */
class Conn {
  #socket: Socket;
  #buffer = Buffer.alloc(0);
  #waiting: (() => void) | undefined;
  #closed = false;
  #host: string;

  private constructor(socket: Socket, host: string) {
    this.#socket = socket;
    this.#host = host;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiting?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#waiting?.();
    });
  }

  static open(url: string): Promise<Conn> {
    const { hostname, port, host } = new URL(url);
    return new Promise((resolve, reject) => {
      const socket = connect(Number(port), hostname, () => resolve(new Conn(socket, host)));
      socket.once('error', reject);
    });
  }

  async send(path: string, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, string>; body: string }> {
    const lines = [`GET ${path} HTTP/1.1`, `Host: ${this.#host}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''];
    this.#socket.write(lines.join('\r\n'));
    for (;;) {
      const end = this.#buffer.indexOf('\r\n\r\n');
      if (end !== -1) {
        const head = this.#buffer.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(head[0]!.split(' ')[1]);
        const parsed: Record<string, string> = {};
        for (const line of head.slice(1)) {
          const colon = line.indexOf(':');
          parsed[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const length = Number(parsed['content-length'] ?? 0);
        if (this.#buffer.length >= end + 4 + length) {
          const body = this.#buffer.subarray(end + 4, end + 4 + length).toString('utf8');
          this.#buffer = this.#buffer.subarray(end + 4 + length);
          return { status, headers: parsed, body };
        }
      }
      if (this.#closed) throw new Error('connection closed before a whole response');
      await new Promise<void>((resolve) => (this.#waiting = resolve));
      this.#waiting = undefined;
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}

const dpopHeaders = (client: Client, proof: string) => ({ Authorization: `DPoP ${client.token}`, DPoP: proof });

async function refusals(gw: TestGateway): Promise<Record<string, number>> {
  const text = (await rawRequest(gw.adminUrl, '/metrics')).text;
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^ztgw_dpop_replay_cache_refusals_total\{reason="([a-z_]+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('a client floods unique proofs from one key (its share is 100 of 1000 entries)', () => {
  let gw: TestGateway;
  let conn: Conn;
  beforeAll(async () => {
    gw = await startTestGateway(gatewayConfig({ replayCacheMaxEntries: 1000, replayCacheKeyShare: 0.1 }), { dir });
  });
  afterAll(() => gw?.close());
  afterEach(() => conn?.close());

  it('is refused past its share (503, counted, logged), and a captured proof stays refused: the cache never forgot it', async () => {
    const attacker = await newClient('mallory');
    const victim = await newClient('alice');
    const htu = `${gw.url}/bound/x`;
    conn = await Conn.open(gw.url);

    // The proof an attacker captured (the victim-shaped case is the same key used twice).
    const captured = attacker.proof(htu);
    expect((await conn.send('/bound/x', dpopHeaders(attacker, captured))).status).toBe(200);
    let accepted = 1;
    let first503: Awaited<ReturnType<Conn['send']>> | undefined;
    // Flood well past the share and past the whole cache's size.
    for (let i = 0; i < 1200; i++) {
      const res = await conn.send('/bound/x', dpopHeaders(attacker, attacker.proof(htu)));
      if (res.status === 200) accepted++;
      else {
        expect(res.status).toBe(503);
        first503 ??= res;
      }
    }
    expect(accepted).toBe(100);
    expect(first503!.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(JSON.parse(first503!.body).code).toBe('ERR_DEPENDENCY_UNAVAILABLE');
    expect(first503!.headers['retry-after']).toBeDefined();

    // The replay of the captured proof: remembered, so refused as a replay (401), not a pass.
    const replay = await conn.send('/bound/x', dpopHeaders(attacker, captured));
    expect(replay.status).toBe(401);
    expect(JSON.parse(replay.body).code).toBe('ERR_INVALID_DPOP_PROOF');

    // Another key is unaffected while this one sits at its share.
    for (let i = 0; i < 5; i++) expect((await conn.send('/bound/x', dpopHeaders(victim, victim.proof(htu)))).status).toBe(200);

    expect(await refusals(gw)).toEqual({ key_full: 1101 });
    const warnings = gw.logs.filter((l) => /holds its whole share/.test(l.msg ?? ''));
    // 1st, 10th, 100th, 1000th: visible, but not a line per refused request.
    expect(warnings.map((l) => l.refused)).toEqual([1, 10, 100, 1000]);
    // Naming the key, so an operator can tell which client floods (a thumbprint, no secret).
    expect(warnings.every((l) => l.jkt === attacker.jkt)).toBe(true);
  }, 60_000);
});

describe('a full cache (two keys hold every entry)', () => {
  let gw: TestGateway;
  let conn: Conn;
  beforeAll(async () => {
    gw = await startTestGateway(gatewayConfig({ replayCacheMaxEntries: 1000, replayCacheKeyShare: 0.5 }), { dir });
  });
  afterAll(() => gw?.close());
  afterEach(() => conn?.close());

  it('refuses new proofs from anyone rather than evict a live jti; every captured proof stays refused', async () => {
    const a = await newClient('alice');
    const b = await newClient('bob');
    const newcomer = await newClient('carol');
    const htu = `${gw.url}/bound/x`;
    conn = await Conn.open(gw.url);
    const firstOf: Record<string, string> = {};
    for (const client of [a, b]) {
      for (let i = 0; i < 500; i++) {
        const proof = client.proof(htu);
        firstOf[client.jkt] ??= proof;
        expect((await conn.send('/bound/x', dpopHeaders(client, proof))).status).toBe(200);
      }
    }
    // 1000 live entries: the newcomer's fresh proofs are refused, fail closed…
    for (let i = 0; i < 20; i++) {
      const res = await conn.send('/bound/x', dpopHeaders(newcomer, newcomer.proof(htu)));
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).code).toBe('ERR_DEPENDENCY_UNAVAILABLE');
    }
    // …and nothing was evicted to make room: the oldest proofs are still replays.
    for (const client of [a, b]) {
      const res = await conn.send('/bound/x', dpopHeaders(client, firstOf[client.jkt]!));
      expect(res.status).toBe(401);
      expect(JSON.parse(res.body).code).toBe('ERR_INVALID_DPOP_PROOF');
    }
    expect(await refusals(gw)).toEqual({ cache_full: 20 });
    expect(gw.logs.some((l) => /replay cache full of live jtis/.test(l.msg ?? ''))).toBe(true);
    // The old metric of forgotten jtis is gone: nothing is forgotten any more.
    expect((await rawRequest(gw.adminUrl, '/metrics')).text).not.toContain('ztgw_dpop_replay_early_evictions_total');
  }, 60_000);
});

describe('the Redis replay cache', () => {
  it('warns at start when Redis may evict keys (it would forget live jtis when full), not under noeviction', async () => {
    const redis = await startRedis();
    const admin = new Redis(redis.url);
    const started: TestGateway[] = [];
    try {
      const start = async () => {
        const gw = await startTestGateway({ ...gatewayConfig({}), redis: { url: redis.url } }, { dir });
        started.push(gw);
        return gw;
      };
      const quiet = await start();
      // A served DPoP request needs Redis ready, and the policy check went out on that
      // connection before the request's SET: its answer has been handled by now.
      const client = await newClient('alice');
      expect((await rawRequest(quiet.url, '/bound/x', { headers: dpopHeaders(client, client.proof(`${quiet.url}/bound/x`)) })).status).toBe(200);
      await admin.call('CONFIG', 'SET', 'maxmemory-policy', 'volatile-lru');
      const warned = await start();
      await expect.poll(() => warned.logs.find((l) => /maxmemory-policy evicts keys/.test(l.msg ?? '')), { timeout: 5000 }).toMatchObject({ maxmemoryPolicy: 'volatile-lru' });
      expect(quiet.logs.some((l) => /maxmemory-policy/.test(l.msg ?? ''))).toBe(false);
    } finally {
      for (const gw of started) await gw.close();
      admin.disconnect();
      await redis.stop();
    }
  }, 30_000);
});
