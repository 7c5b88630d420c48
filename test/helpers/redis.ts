// A private, throw-away redis-server per test file: the Redis stores and the
// "Redis down" failure modes are tested against a real server, and stop() kills it
// for real, so "down" means connection refused, not a mocked error.

import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { freePort } from './ports.ts';

export interface RedisProcess {
  port: number;
  url: string;
  pid: number;
  /** Kills this server's PID only and resolves once it has exited. Idempotent. */
  stop(): Promise<void>;
}

export interface StartRedisOptions {
  /** Executable to run; default `redis-server` from PATH. */
  bin?: string;
  /** How long to wait for the first PONG; default 5000 ms. */
  timeoutMs?: number;
  /**
   * Listen on this port (e.g. to restart a stopped server where its clients reconnect);
   * default a free one. A given port is tried once: if taken, startRedis rejects.
   */
  port?: number;
  /** Extra redis-server arguments, after the defaults (e.g. ['--cluster-enabled', 'yes']). */
  args?: readonly string[];
}

const HOST = '127.0.0.1';
// freePort() can lose the port to another process before redis binds it.
const PORT_ATTEMPTS = 3;
const KEEP_OUTPUT = 4096;

class AddressInUse extends Error {}

export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      // A given port with a server on it would answer the readiness PING for the new one
      // (which then exits with "address in use"): refuse it up front.
      if (opts.port !== undefined && (await ping(opts.port))) throw new AddressInUse(`port ${opts.port} is already in use`);
      const port = opts.port ?? (await freePort(HOST));
      return await startOnce(opts.bin ?? 'redis-server', opts.timeoutMs ?? 5000, port, opts.args ?? []);
    } catch (err) {
      if (!(err instanceof AddressInUse) || attempt >= PORT_ATTEMPTS || opts.port !== undefined) throw err;
    }
  }
}

async function startOnce(bin: string, timeoutMs: number, port: number, extra: readonly string[]): Promise<RedisProcess> {
  // No persistence: nothing is written to disk and a test never sees a previous
  // run's keys. --dir only matters if a test issues SAVE itself.
  const args = ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', tmpdir(), '--daemonize', 'no', '--loglevel', 'warning', ...extra];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });

  let output = '';
  const keep = (c: Buffer): void => {
    output = (output + c.toString('utf8')).slice(-KEEP_OUTPUT);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);

  // If the test process dies without calling stop(), do not leave an orphan server.
  // process.kill is synchronous, which is all an 'exit' handler may do.
  const killOnExit = (): void => {
    if (isRunning(child)) child.kill('SIGKILL');
  };
  process.on('exit', killOnExit);

  // A spawn that fails (ENOENT) emits 'error' and may never emit 'exit'.
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => {
      if (child.pid === undefined) resolve();
    });
  });
  void exited.then(() => process.off('exit', killOnExit));

  try {
    await waitUntilReady(child, port, timeoutMs, () => output, bin);
  } catch (err) {
    if (child.pid !== undefined && isRunning(child)) {
      child.kill('SIGKILL');
      await exited;
    }
    throw err;
  }

  const pid = child.pid as number;
  let stopping: Promise<void> | undefined;
  return {
    port,
    url: `redis://${HOST}:${port}`,
    pid,
    stop() {
      stopping ??= (async () => {
        if (!isRunning(child)) return;
        child.kill('SIGTERM');
        // Without persistence redis exits on SIGTERM in milliseconds; SIGKILL is for
        // a server wedged by a test (e.g. DEBUG SLEEP).
        const escalate = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(escalate);
      })();
      return stopping;
    },
  };
}

async function waitUntilReady(child: ChildProcess, port: number, timeoutMs: number, output: () => string, bin: string): Promise<void> {
  let failure: Error | undefined;
  child.once('error', (err: NodeJS.ErrnoException) => {
    failure =
      err.code === 'ENOENT'
        ? new Error(`${bin} not found on PATH; install Redis (e.g. apt-get install redis-server) to run these tests`, { cause: err })
        : new Error(`cannot start ${bin}: ${err.message}`, { cause: err });
  });
  child.once('exit', (code, signal) => {
    if (failure) return;
    const out = output().trim();
    failure = /address already in use/i.test(out)
      ? new AddressInUse(`port ${port} taken before ${bin} could bind it`)
      : new Error(`${bin} exited before answering PING (code ${code}, signal ${signal})${out ? `:\n${out}` : ''}`);
  });

  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (failure) throw failure;
    if (await ping(port)) return;
    if (failure) throw failure;
    if (Date.now() >= deadline) {
      const out = output().trim();
      throw new Error(`${bin} on port ${port} did not answer PING within ${timeoutMs} ms${out ? `:\n${out}` : ''}`);
    }
    await sleep(50);
  }
}

/** One raw RESP PING; true only on +PONG. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, HOST);
    let buf = '';
    const finish = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => finish(false));
    sock.once('error', () => finish(false));
    sock.once('connect', () => sock.write('*1\r\n$4\r\nPING\r\n'));
    sock.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      // -LOADING and friends mean "not yet"; only a full line is an answer.
      if (buf.includes('\r\n')) finish(buf.startsWith('+PONG'));
    });
    sock.once('end', () => finish(false));
  });
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
