// One-file edits in a 1,000-policy set while the gateway serves: how long until an edit
// decides requests, and what request latency does meanwhile (p50, p99, max) against the same
// load in the second before each edit, plus the gateway's longest event-loop stall in each
// window. Several edits, their windows pooled: one edit's window holds too few requests
// for a p99. Bounded: about 12 s. Run on its own, on a quiet machine:
//   node_modules/.bin/node test/bench/reload-1000.ts [--policies 1000] [--connections 8] [--edits 5]
// The gateway runs in a child process (this file with `child FILE`) so that the load's
// client and the gateway do not share an event loop.
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
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
  // The longest the gateway's event loop was held since the last ask (ms), as the parent asks.
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  process.on('message', () => {
    process.send!({ stallMs: delay.max / 1e6 });
    delay.reset();
  });
  process.send!({ url: gw.url });
  process.on('disconnect', () => void gw.close().then(() => process.exit(0)));
} else {
  await main();
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { policies: { type: 'string', default: '1000' }, connections: { type: 'string', default: '8' }, edits: { type: 'string', default: '5' } },
  });
  const total = Number(values.policies);
  const connections = Number(values.connections);
  const edits = Number(values.edits);
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
    const stall = () =>
      new Promise<number>((resolve) => {
        started.once('message', (m: { stallMs: number }) => resolve(m.stallMs));
        started.send('stall');
      });
    await new Promise((r) => setTimeout(r, 2000)); // warm-up
    const edited = largeSet(ROUTE, total).at(-1)!;
    const windows: { steady: [number, number]; during: [number, number] }[] = [];
    const stalls = { steady: [] as number[], during: [] as number[] };
    const effects: (number | undefined)[] = [];
    for (let k = 0; k < edits; k++) {
      await stall(); // resets the gateway's stall count
      await new Promise((r) => setTimeout(r, 1000)); // steady state
      stalls.steady.push(await stall());
      const editAt = performance.now();
      // The edit: one file of the set becomes a deny on a probe path of the loaded route,
      // a new path each time, so each edit's effect is seen on its own.
      writeFileSync(
        join(dir, 'policies', edited.file),
        `apiVersion: zt-gateway/v1\nname: probe-deny\nappliesTo: { routes: [${ROUTE}], pathPrefixes: [/${ROUTE}/probe-${k}] }\nrules:\n  - name: no\n    effect: deny\n    when: 'true'\n`,
      );
      let effectMs: number | undefined;
      while (performance.now() - editAt < 5000) {
        if ((await get(`/${ROUTE}/probe-${k}`)) === 403) {
          effectMs = performance.now() - editAt;
          break;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      effects.push(effectMs);
      await new Promise((r) => setTimeout(r, 200));
      stalls.during.push(await stall());
      windows.push({ steady: [editAt - 1000, editAt], during: [editAt, editAt + (effectMs ?? 5000) + 200] });
    }
    running = false;
    await Promise.all(loops);
    agent.destroy();

    const within = (w: keyof (typeof windows)[number]) => samples.filter((s) => windows.some((x) => s.at >= x[w][0] && s.at < x[w][1]));
    const stats = (xs: typeof samples) => {
      const ms = xs.map((s) => s.ms).sort((a, b) => a - b);
      const at = (q: number) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))]!;
      return { requests: ms.length, p50: at(0.5).toFixed(2), p99: at(0.99).toFixed(2), max: ms.at(-1)!.toFixed(2), non200: xs.filter((s) => s.status !== 200).length };
    };
    const list = (xs: readonly (number | undefined)[]) => xs.map((x) => (x === undefined ? 'NOT within 5 s' : x.toFixed(0))).join(', ');
    console.log(`policies: ${total}, connections: ${connections}, edits: ${edits}`);
    console.log(`each edit took effect after (ms): ${list(effects)}`);
    console.log('steady (1 s before each edit), ms:', stats(within('steady')), `longest loop stall per window: ${list(stalls.steady)} ms`);
    console.log('from each edit until it took effect (+200 ms), ms:', stats(within('during')), `longest loop stall per window: ${list(stalls.during)} ms`);
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
