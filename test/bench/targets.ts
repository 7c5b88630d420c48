// What the benchmark loads. A target is a name and a start() that yields a URL, a
// request-headers factory and a stop(), and, when every request needs headers of its own
// (DPoP proofs), a pool of them. New targets (a policy route, …) are one more factory
// here plus one line in run.ts; the runner does not change.
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { stringify } from 'yaml';
import type { Issuer } from '../../src/dev/issuer.ts';
import { createDpopClient, proofPool, type ProofAlg } from './dpop-client.ts';
import { freePort, waitFor200, type ChildSet, type HeaderPool } from './lib.ts';
import { allowAllSet, realisticRouteSet } from './policy-sets.ts';

export interface RunningTarget {
  /** Full URL autocannon requests, path included. */
  readonly url: string;
  /** The process serving `url` (the gateway, the bare proxy, the echo): its CPU per request is reported. */
  readonly pid: number;
  /** Another process this target's requests make work for (its Redis): its CPU per request is reported beside. */
  readonly helperPid?: { readonly name: string; readonly pid: number };
  /** Called once before every load run: the headers every request of the run carries. */
  headers(): Record<string, string> | Promise<Record<string, string>>;
  /**
   * For a target whose every request needs a header of its own (a DPoP proof, single
   * use): called before every load run (and the preflight) with how many requests to
   * prepare for and how long the run lasts. One pool per run; its headers are merged
   * over headers().
   */
  headerPool?(count: number, durationS: number): Promise<HeaderPool>;
  /** A gateway's admin /metrics, for figures only the gateway can measure (the risk stage's time). */
  readonly metricsUrl?: string;
  stop(): Promise<void>;
}

export interface Target {
  readonly name: string;
  start(opts?: StartOptions): Promise<RunningTarget>;
}

export interface StartOptions {
  /** Node options for a gateway process (e.g. --cpu-prof for the stage profile); other targets ignore them. */
  readonly nodeArgs?: readonly string[];
}

/** What every target shares: the echo upstream, a dev issuer and a scratch directory. */
export interface BenchFixture {
  readonly children: ChildSet;
  /** Origin of the echo upstream, e.g. http://127.0.0.1:41234. */
  readonly echoUrl: string;
  readonly echoPid: number;
  readonly issuer: Issuer;
  /** Audience the gateway's issuer accepts. */
  readonly audience: string;
  /** One token for the whole run: every gateway request takes the cached-token path. */
  readonly token: string;
  /** The token's `sub`, and so the owner a device must be enrolled to. */
  readonly subject: string;
  /** Temporary, outside the repo; removed by the runner. */
  readonly tmpDir: string;
  /** A redis-server of the bench's own (redis://127.0.0.1:port), for the Redis-backed targets. */
  readonly redisUrl: string;
  readonly redisPid: number;
}

const BENCH_DIR = import.meta.dirname;
const REPO_ROOT = resolve(BENCH_DIR, '../..');
export const BENCH_PATH = '/echo/bench';
/** The name of the one route every gateway target has, `/echo/` to the echo upstream. */
const BENCH_ROUTE = 'echo';

// Every target gets the same Authorization header, including those that ignore it, so
// the bytes on the wire (and echoed back) are the same and only the gateway's work differs.
const bearer = (fx: BenchFixture) => (): Record<string, string> => ({ authorization: `Bearer ${fx.token}` });

/** (1) The upstream itself: the ceiling for anything in front of it. */
export function echoDirect(fx: BenchFixture): Target {
  return {
    name: 'echo direct',
    async start() {
      // Already running: it is the shared upstream, started (and stopped) by the runner.
      return { url: fx.echoUrl + BENCH_PATH, pid: fx.echoPid, headers: bearer(fx), stop: async () => {} };
    },
  };
}

/**
 * (2b) The same bare proxy, loaded the way the DPoP route is: a fresh `DPoP` header of a
 * proof's size on every request, from a pool prepared like the proofs. The DPoP route is
 * also compared with this, so that ratio measures the gateway, not the bytes on the wire
 * or how the generator sends them.
 */
export function bareProxyPerRequestHeaders(fx: BenchFixture): Target {
  const bare = bareProxy(fx);
  return {
    name: BARE_PER_REQUEST,
    async start() {
      const running = await bare.start();
      return {
        ...running,
        async headerPool(count) {
          // Same length as an ES256 proof with its jwk header; content is irrelevant to this
          // proxy, so the sets may be re-sent when a fast round uses them all.
          return { sets: Array.from({ length: count }, () => ({ dpop: randomBytes(420).toString('base64url') })), singleUse: false };
        },
      };
    },
  };
}

export const BARE_PER_REQUEST = 'bare proxy, per-request headers';

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
        pid: child.pid,
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
    async start(opts) {
      const gateway = await startGateway(fx, { dir: 'jwt' }, opts);
      return { url: gateway.url, pid: gateway.pid, headers: bearer(fx), stop: gateway.stop };
    },
  };
}

/** How old a DPoP proof may be; the gateway is configured with it and pools are checked against it. */
export const DPOP_MAX_AGE_S = 60;

/**
 * (4) zt-gateway, the full device-trust path: the same route requiring a DPoP-bound token
 * and an enrolled device. Per request: the cached JWT, a DPoP proof verified (signature,
 * htm/htu/iat/ath, jti replay check), the device's posture looked up, and the identity
 * assertion (its signature cached across requests).
 */
export function gatewayDpop(fx: BenchFixture, alg: ProofAlg = 'ES256'): Target {
  return {
    name: alg === 'ES256' ? 'zt-gateway dpop' : `zt-gateway dpop ${alg}`,
    async start() {
      const client = createDpopClient(alg);
      // Its own token: bound to the device key, so only this target's requests need proofs.
      const token = await fx.issuer.sign({ groups: ['eng'], cnf: { jkt: client.jkt } }, { sub: fx.subject, aud: fx.audience, expiresIn: '1h' });
      const now = new Date().toISOString();
      const devices = {
        devices: [
          {
            id: client.jkt,
            owner: fx.subject,
            label: 'bench device',
            enrolledAt: now,
            posture: { managed: true, diskEncrypted: true, os: 'linux', osVersion: '6.8', lastCheckIn: now, trustLevel: 'high' },
          },
        ],
      };
      const gateway = await startGateway(fx, {
        dir: `dpop-${alg}`,
        route: { device: { binding: 'required', requireEnrolled: true } },
        config: {
          // One device key at thousands of proofs/s, which no real device sends: let it use the
          // whole replay cache instead of the default tenth (100 000 proofs per window).
          identity: { dpop: { algorithms: [alg], maxAgeS: DPOP_MAX_AGE_S, replayCacheKeyShare: 1 } },
          devices: { registry: { file: 'devices.yaml' } },
        },
        files: { 'devices.yaml': stringify(devices) },
      });
      const proofRequest = { method: 'GET', htu: gateway.url, accessToken: token };
      return {
        url: gateway.url,
        pid: gateway.pid,
        headers: () => ({ authorization: `DPoP ${token}` }),
        async headerPool(count, durationS) {
          const t0 = Date.now();
          const pool = proofPool(await client.mint(count, proofRequest));
          // The first proof is the oldest; it must still be fresh when the run ends.
          const ageAtEndS = (Date.now() - t0) / 1000 + durationS;
          if (ageAtEndS > DPOP_MAX_AGE_S - 5) {
            throw new Error(`minting ${count} proofs took ${((Date.now() - t0) / 1000).toFixed(1)} s: the first would be stale (maxAgeS ${DPOP_MAX_AGE_S}) before a ${durationS} s run ends`);
          }
          return pool;
        },
        stop: gateway.stop,
      };
    },
  };
}

/**
 * (5) and (6): the JWT route of (3) with a policies section, once with the realistic
 * set for the route (test/bench/policy-sets.ts: 10 policies, 10 rules; the bench token's
 * group "eng" is allowed from loopback by one of them, after every deny and step_up rule
 * has been evaluated) and once with a single allow-all rule. Issue 5: requests/s with
 * policies on must stay within 10% of the allow-all configuration. Allows are logged at
 * 1%, as the config's default.
 */
export function gatewayPolicies(fx: BenchFixture): Target {
  return policyTarget(fx, 'zt-gateway jwt+policies', 'policies', realisticRouteSet(BENCH_ROUTE));
}

export function gatewayAllowAll(fx: BenchFixture): Target {
  return policyTarget(fx, 'zt-gateway jwt+allow-all', 'allow-all', allowAllSet(BENCH_ROUTE));
}

function policyTarget(fx: BenchFixture, name: string, dir: string, files: readonly { file: string; text: string }[]): Target {
  return {
    name,
    async start(opts) {
      const gateway = await startGateway(fx, {
        dir,
        config: { policies: { dir: 'policies', decisionLog: { allowSampleRate: 0.01 } } },
        files: Object.fromEntries(files.map((f) => [join('policies', f.file), f.text])),
      }, opts);
      return { url: gateway.url, pid: gateway.pid, headers: bearer(fx), stop: gateway.stop };
    },
  };
}

/**
 * (7) and (8): the JWT route of (3) with one rate-limit tier, its limit so high it never
 * refuses: the cost of checking it. Issue 14: against (3), at most 15% fewer requests/s and
 * at most 1 ms more p99 with the counters in Redis (a redis-server of the bench's own, on
 * loopback); and the same tier in memory, the embedded default.
 */
export function gatewayLimitRedis(fx: BenchFixture): Target {
  return limitTarget(fx, 'zt-gateway jwt+limit redis', 'limit-redis', { redis: { url: fx.redisUrl } }, { name: 'redis', pid: fx.redisPid });
}

/**
 * The JWT route with the risk stage on (the shipped model, default batching); no policy reads
 * the score, so every request is served whatever it scores. One subject sends all the load.
 */
export function gatewayRisk(fx: BenchFixture): Target {
  return {
    name: 'zt-gateway jwt+risk',
    async start(opts) {
      const model = join(BENCH_DIR, '../../models/anomaly.onnx');
      const gateway = await startGateway(fx, { dir: 'risk', config: { risk: { model } } }, opts);
      return { url: gateway.url, pid: gateway.pid, headers: bearer(fx), metricsUrl: gateway.metricsUrl, stop: gateway.stop };
    },
  };
}

export function gatewayLimitMemory(fx: BenchFixture): Target {
  return limitTarget(fx, 'zt-gateway jwt+limit memory', 'limit-memory', { store: 'memory' });
}

function limitTarget(fx: BenchFixture, name: string, dir: string, store: Record<string, unknown>, helperPid?: RunningTarget['helperPid']): Target {
  return {
    name,
    async start(opts) {
      const gateway = await startGateway(
        fx,
        {
          dir,
          route: { limits: ['bench'] },
          config: { limits: { ...store, tiers: { bench: { limit: 1_000_000_000, per: '1h', key: ['subject'] } } } },
        },
        opts,
      );
      return { url: gateway.url, pid: gateway.pid, ...(helperPid && { helperPid }), headers: bearer(fx), stop: gateway.stop };
    },
  };
}

interface GatewayVariant {
  /** Subdirectory of the scratch directory for this gateway's config, JWKS and other files. */
  readonly dir: string;
  /** Merged into the one route, `/echo/` to the echo upstream. */
  readonly route?: Record<string, unknown>;
  /** Merged into the config, one level deep (`identity.dpop` next to `identity.issuers`). */
  readonly config?: Record<string, Record<string, unknown>>;
  /** More files next to the config: name (may include a subdirectory) → content. */
  readonly files?: Record<string, string>;
}

/**
 * Writes a gateway config for `variant` and starts `ztgw serve --config` on it, as
 * production does. Every gateway target is one of these: they differ only in what the
 * variant adds, so their numbers compare like for like.
 */
async function startGateway(fx: BenchFixture, variant: GatewayVariant, opts: StartOptions = {}): Promise<{ url: string; pid: number; metricsUrl: string; stop(): Promise<void> }> {
  // A directory each: a gateway reads (and may watch) files next to its config.
  const dir = join(fx.tmpDir, variant.dir);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'jwks.json'), JSON.stringify(fx.issuer.publicJwks()));
  for (const [name, content] of Object.entries(variant.files ?? {})) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), content);
  }
  // `ztgw serve` cannot report a port it was given as 0, so pick them here. Another
  // process may grab one in between; that shows as "address in use", and we retry.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const adminPort = await freePort();
    const configFile = join(dir, 'gateway.yaml');
    const sections: Record<string, Record<string, unknown>> = {
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
    };
    for (const [name, values] of Object.entries(variant.config ?? {})) sections[name] = { ...sections[name], ...values };
    const routes = [{ name: BENCH_ROUTE, pathPrefix: '/echo/', upstream: fx.echoUrl, ...variant.route }];
    await writeFile(configFile, stringify({ ...sections, routes }));
    const child = await fx.children.spawn({
      name: `zt-gateway (${variant.dir})`,
      args: [...(opts.nodeArgs ?? []), join(REPO_ROOT, 'src/cli/ztgw.ts'), 'serve', '--config', configFile],
      ready: 'none',
    });
    try {
      await waitFor200(`http://127.0.0.1:${adminPort}/readyz`, { child, timeoutMs: 20_000 });
    } catch (err) {
      await fx.children.stop(child.pid);
      if (attempt < 3 && /EADDRINUSE/.test(child.stderrTail())) continue;
      throw err;
    }
    // A profiled gateway writes its profile on exit: give it time to.
    const graceMs = opts.nodeArgs?.length ? 15_000 : undefined;
    return { url: `http://127.0.0.1:${port}${BENCH_PATH}`, pid: child.pid, metricsUrl: `http://127.0.0.1:${adminPort}/metrics`, stop: () => fx.children.stop(child.pid, graceMs) };
  }
}
