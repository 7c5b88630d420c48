// A private three-master Redis Cluster per test file: three `redis-server
// --cluster-enabled yes` processes on free ports, joined with `redis-cli --cluster create`,
// ready once every node reports cluster_state:ok. stop() kills exactly those PIDs.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from './ports.ts';
import { startRedis, type RedisProcess } from './redis.ts';

const run = promisify(execFile);
const HOST = '127.0.0.1';

export interface RedisClusterProcess {
  nodes: RedisProcess[];
  /** host/port pairs for `new Cluster(startupNodes)`. */
  startupNodes: { host: string; port: number }[];
  /** Kills the three servers (their PIDs only) and removes their config files. Idempotent. */
  stop(): Promise<void>;
}

export interface StartClusterOptions {
  /** How long to wait for cluster_state:ok on every node; default 20 000 ms. */
  timeoutMs?: number;
}

async function startNode(dir: string): Promise<RedisProcess> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(HOST);
    // The cluster bus defaults to port + 10000, which nobody checked was free; name it.
    const bus = await freePort(HOST);
    try {
      return await startRedis({
        port,
        args: ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-port', String(bus), '--cluster-node-timeout', '5000'],
      });
    } catch (err) {
      // Another process took a port between freePort and the bind: try others.
      if (attempt >= 3 || !/taken before|address already in use/i.test((err as Error).message)) throw err;
    }
  }
}

export async function startRedisCluster(opts: StartClusterOptions = {}): Promise<RedisClusterProcess> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const dir = await mkdtemp(join(tmpdir(), 'ztgw-cluster-'));
  const nodes: RedisProcess[] = [];
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await Promise.all(nodes.map((n) => n.stop()));
      await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };
  try {
    for (let i = 0; i < 3; i++) nodes.push(await startNode(dir));
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `${HOST}:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      timeout: timeoutMs,
    });
    await waitForClusterOk(nodes, timeoutMs);
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, startupNodes: nodes.map((n) => ({ host: HOST, port: n.port })), stop };
}

async function waitForClusterOk(nodes: RedisProcess[], timeoutMs: number): Promise<void> {
  const clients = nodes.map((n) => new Redis(n.port, HOST, { lazyConnect: true, maxRetriesPerRequest: 0 }));
  for (const c of clients) c.on('error', () => {});
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const infos = await Promise.all(clients.map((c) => c.call('CLUSTER', 'INFO').then(String, () => '')));
      if (infos.every((i) => /cluster_state:ok/.test(i))) return;
      if (Date.now() >= deadline) throw new Error(`redis cluster not ok within ${timeoutMs} ms:\n${infos.join('\n---\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    for (const c of clients) c.disconnect();
  }
}
