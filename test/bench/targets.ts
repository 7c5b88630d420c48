// What the benchmark loads. A target is a name and a start() that yields a URL, a
// request-headers factory and a stop(). New targets (a DPoP route, a policy route) are
// one more factory here plus one line in run.ts; the runner does not change.
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import type { Issuer } from '../../src/dev/issuer.ts';
import { freePort, waitFor200, type ChildSet } from './lib.ts';

export interface RunningTarget {
  /** Full URL autocannon requests, path included. */
  readonly url: string;
  /** Called once before every load run (autocannon sends the same headers for the whole run). */
  headers(): Record<string, string> | Promise<Record<string, string>>;
  stop(): Promise<void>;
}

export interface Target {
  readonly name: string;
  start(): Promise<RunningTarget>;
}

/** What every target shares: the echo upstream, a dev issuer and a scratch directory. */
export interface BenchFixture {
  readonly children: ChildSet;
  /** Origin of the echo upstream, e.g. http://127.0.0.1:41234. */
  readonly echoUrl: string;
  readonly issuer: Issuer;
  /** Audience the gateway's issuer accepts. */
  readonly audience: string;
  /** One token for the whole run: every gateway request takes the cached-token path. */
  readonly token: string;
  /** Temporary, outside the repo; removed by the runner. */
  readonly tmpDir: string;
}

const BENCH_DIR = import.meta.dirname;
const REPO_ROOT = resolve(BENCH_DIR, '../..');
export const BENCH_PATH = '/echo/bench';

// Every target gets the same Authorization header, including those that ignore it, so
// the bytes on the wire (and echoed back) are the same and only the gateway's work differs.
const bearer = (fx: BenchFixture) => (): Record<string, string> => ({ authorization: `Bearer ${fx.token}` });

/** (1) The upstream itself: the ceiling for anything in front of it. */
export function echoDirect(fx: BenchFixture): Target {
  return {
    name: 'echo direct',
    async start() {
      // Already running: it is the shared upstream, started (and stopped) by the runner.
      return { url: fx.echoUrl + BENCH_PATH, headers: bearer(fx), stop: async () => {} };
    },
  };
}

/** (2) Fastify + @fastify/http-proxy and nothing else: the baseline ratios are taken against. */
export function bareProxy(fx: BenchFixture): Target {
  return {
    name: 'bare fastify proxy',
    async start() {
      const child = await fx.children.spawn({
        name: 'bare-proxy',
        args: [join(BENCH_DIR, 'bare-proxy.ts'), fx.echoUrl],
        ready: 'json-line',
      });
      return {
        url: String(child.readyLine.url) + BENCH_PATH,
        headers: bearer(fx),
        stop: () => fx.children.stop(child.pid),
      };
    },
  };
}

/** (3) zt-gateway, a JWT route, started as production starts it: `ztgw serve --config`. */
export function gatewayJwt(fx: BenchFixture): Target {
  return {
    name: 'zt-gateway jwt',
    async start() {
      const jwksFile = join(fx.tmpDir, 'jwks.json');
      await writeFile(jwksFile, JSON.stringify(fx.issuer.publicJwks()));
      // `ztgw serve` cannot report a port it was given as 0, so pick them here. Another
      // process may grab one in between; that shows as "address in use", and we retry.
      for (let attempt = 1; ; attempt++) {
        const port = await freePort();
        const adminPort = await freePort();
        const configFile = join(fx.tmpDir, 'gateway.yaml');
        const config = {
          server: {
            listen: { host: '127.0.0.1', port },
            admin: { host: '127.0.0.1', port: adminPort },
            // `info`, not `warn`: the per-request access line is part of what the
            // gateway costs. Its stdout goes to /dev/null, not through us.
            logLevel: 'info',
          },
          identity: {
            issuers: [
              {
                name: 'bench',
                issuer: fx.issuer.issuer,
                audiences: [fx.audience],
                algorithms: [fx.issuer.alg],
                jwksFile: 'jwks.json',
              },
            ],
          },
          routes: [{ name: 'echo', pathPrefix: '/echo/', upstream: fx.echoUrl }],
        };
        await writeFile(configFile, stringify(config));
        const child = await fx.children.spawn({
          name: 'zt-gateway',
          args: [join(REPO_ROOT, 'src/cli/ztgw.ts'), 'serve', '--config', configFile],
          ready: 'none',
        });
        try {
          await waitFor200(`http://127.0.0.1:${adminPort}/readyz`, { child, timeoutMs: 20_000 });
        } catch (err) {
          await fx.children.stop(child.pid);
          if (attempt < 3 && /EADDRINUSE/.test(child.stderrTail())) continue;
          throw err;
        }
        return {
          url: `http://127.0.0.1:${port}${BENCH_PATH}`,
          headers: bearer(fx),
          stop: () => fx.children.stop(child.pid),
        };
      }
    },
  };
}
