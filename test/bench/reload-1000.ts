// A one-file edit in a 1,000-policy set while the gateway serves: how long until the edit
// decides requests, and what request latency does meanwhile (p99, max) against the same
// load before the edit. Bounded: about 10 s. Run on its own, on a quiet machine:
//   node_modules/.bin/node test/bench/reload-1000.ts [--policies 1000] [--connections 8]
// The gateway runs in a child process (this file with `child FILE`) so that the load's
// client and the gateway do not share an event loop.
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SignJWT } from 'jose';
import { stringify } from 'yaml';
import { startEchoServer } from '../../src/dev/echo.ts';
import { largeSet } from './policy-sets.ts';

const SECRET = 'reload-bench-secret-0123456789abcdef';
const ISS = 'https://bench.local/';
const ROUTE = 'app';

if (process.argv[2] === 'child') {
  const { startGateway } = await import('../../src/gateway.ts');
  const { Writable } = await import('node:stream');
  const gw = await startGateway({ source: { file: process.argv[3]!, env: {} }, logDestination: new Writable({ write: (_c, _e, done) => done() }) });
  process.send!({ url: gw.url });
  process.on('disconnect', () => void gw.close().then(() => process.exit(0)));
} else {
  await main();
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { policies: { type: 'string', default: '1000' }, connections: { type: 'string', default: '8' } } });
  const total = Number(values.policies);
  const connections = Number(values.connections);
  const dir = mkdtempSync(join(tmpdir(), 'ztgw-reload-bench-'));
  const echo = await startEchoServer();
  let child: ReturnType<typeof fork> | undefined;
  try {
    mkdirSync(join(dir, 'policies'));
    for (const f of largeSet(ROUTE, total)) writeFileSync(join(dir, 'policies', f.file), f.text);
    writeFileSync(
      join(dir, 'ztgw.yaml'),
      stringify({
        server: { listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
        identity: { issuers: [{ name: 'bench', issuer: ISS, audiences: ['zt-gateway'], algorithms: ['HS256'], secret: SECRET }] },
        routes: [
          { name: ROUTE, pathPrefix: `/${ROUTE}/`, upstream: echo.url },
          ...Array.from({ length: total }, (_, i) => ({ name: `svc-${i}`, pathPrefix: `/svc-route-${i}/`, upstream: echo.url })),
        ],
        policies: { dir: 'policies', reloadDebounceMs: 50 },
      }),
    );
    child = fork(import.meta.filename, ['child', join(dir, 'ztgw.yaml')], { execPath: process.execPath, stdio: 'inherit' });
    const started = child;
    const url = await new Promise<string>((resolve, reject) => {
      started.once('message', (m: { url: string }) => resolve(m.url));
      started.once('exit', (code) => reject(new Error(`gateway exited (${code})`)));
    });
    const token = await new SignJWT({ groups: ['eng'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer(ISS)
      .setAudience('zt-gateway')
      .setSubject('alice')
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode(SECRET));
    const agent = new Agent({ keepAlive: true, maxSockets: connections + 2 });
    const get = (path: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request(`${url}${path}`, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        });
        req.on('error', reject);
        req.end();
      });

    // Closed-loop load: each connection sends its next request when the last answered.
    const samples: { at: number; ms: number; status: number }[] = [];
    let running = true;
    const loops = Array.from({ length: connections }, async () => {
      while (running) {
        const start = performance.now();
        const status = await get(`/${ROUTE}/x`);
        samples.push({ at: start, ms: performance.now() - start, status });
      }
    });
    await new Promise((r) => setTimeout(r, 3000)); // warm-up and steady state
    const editAt = performance.now();
    // The edit: one file of the set becomes a deny on a probe path of the loaded route.
    const edited = largeSet(ROUTE, total).at(-1)!;
    writeFileSync(
      join(dir, 'policies', edited.file),
      `apiVersion: zt-gateway/v1\nname: probe-deny\nappliesTo: { routes: [${ROUTE}], pathPrefixes: [/${ROUTE}/probe] }\nrules:\n  - name: no\n    effect: deny\n    when: 'true'\n`,
    );
    let effectMs: number | undefined;
    while (performance.now() - editAt < 5000) {
      if ((await get(`/${ROUTE}/probe`)) === 403) {
        effectMs = performance.now() - editAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 500));
    running = false;
    await Promise.all(loops);
    agent.destroy();

    const steady = samples.filter((s) => s.at >= editAt - 2000 && s.at < editAt);
    const during = samples.filter((s) => s.at >= editAt && s.at <= editAt + (effectMs ?? 5000) + 200);
    const stats = (xs: typeof samples) => {
      const ms = xs.map((s) => s.ms).sort((a, b) => a - b);
      const at = (q: number) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))]!;
      return { requests: ms.length, p50: at(0.5).toFixed(2), p99: at(0.99).toFixed(2), max: ms.at(-1)!.toFixed(2), non200: xs.filter((s) => s.status !== 200).length };
    };
    console.log(`policies: ${total}, connections: ${connections}`);
    console.log(`edit took effect after: ${effectMs === undefined ? 'NOT within 5 s' : `${effectMs.toFixed(0)} ms`}`);
    console.log('steady (2 s before the edit), ms:', stats(steady));
    console.log('from the edit until it took effect (+200 ms), ms:', stats(during));
  } finally {
    if (child?.connected) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.disconnect();
      await exited;
    }
    await echo.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
