// `npm run bench`: first, in process, the policy evaluator's decision time (10 rules on a
// route; the same route among 1,000 policies); then throughput and latency of the gateway
// core (a JWT route), of its full device-trust path (DPoP-bound token, proof on every
// request, enrolled device), and of the JWT route with policies on (a realistic set for
// the route, and a single allow-all rule) against a bare Fastify proxy and the upstream
// itself. Targets run interleaved, in a new shuffled order each round, so drift on a
// shared machine (thermal, other tenants) hits all of them alike and no target always
// runs first or after the same neighbour. Each target's median round is reported. On a
// 2-core box the load generator (autocannon, or wrk with --generator wrk) competes with the
// servers for CPU, so absolute req/s mean little and the ratios are the numbers to watch:
// to the bare proxy, and policies to allow-all. Beside them, each server process's CPU
// time per request (all its threads, from /proc). DPoP proofs are minted before
// each run, not during it (see dpop-client.ts), and the verifier's in-process cost is
// measured apart.
//
//   npm run bench [-- --rounds 5 --duration 6 --warmup 4 --connections 50 --generator autocannon|wrk --stage-profile 6 --no-policy-reload --only limits|risk]
//
// The risk stage (issue 15) is measured twice: in the gateway (the JWT route with and without
// it, saturated and at a fixed rate: the latency it adds), and in process by risk-micro.ts in a
// child with --expose-gc (bytes per principal, scored requests/s per CPU-second).
//
// Last, each JWT-route gateway runs once more under `node --cpu-prof` for --stage-profile
// seconds (0 skips it) and the bench prints each pipeline stage's CPU per response from the
// profile (stage-profile.ts): a stage that grows shows there, apart from the machine's noise.
//
// Exit 1 if any response was not 2xx or any request failed; the ratios are reported, not
// enforced (one noisy run on a laptop should not fail anything).
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createIssuer } from '../../src/dev/issuer.ts';
import { measureDpopVerify } from './dpop-client.ts';
import { ChildSet, formatTable, median, problemsOf, processCpuMicros, runAutocannon, summarize, type HeaderPool, type LoadOptions, type LoadResult } from './lib.ts';
import { formatDecisionResults, measurePolicyDecisions } from './policy-decisions.ts';
import { readProfile, stageShares, type StageShare } from './stage-profile.ts';
import {
  bareProxy,
  bareProxyPerRequestHeaders,
  BARE_PER_REQUEST,
  DPOP_MAX_AGE_S,
  echoDirect,
  gatewayAllowAll,
  gatewayDpop,
  gatewayJwt,
  gatewayLimitMemory,
  gatewayLimitRedis,
  gatewayPolicies,
  gatewayRisk,
  type BenchFixture,
  type RunningTarget,
  type Target,
} from './targets.ts';
import { quantileBetween, scrapeHistogram } from './histogram.ts';
import { formatRisk, type RiskMicroResult } from './risk-micro.ts';
import { runWrk, wrkOnPath } from './wrk.ts';
import { runFixedRate, type FixedRateResult } from './fixed-rate.ts';
import { random } from '../helpers/random.ts';
import { startRedis, type RedisProcess } from '../helpers/redis.ts';

const BASELINE = 'bare fastify proxy';
const GATEWAY = 'zt-gateway jwt';
const GATEWAY_DPOP = 'zt-gateway dpop';
const GATEWAY_POLICIES = 'zt-gateway jwt+policies';
const GATEWAY_ALLOW_ALL = 'zt-gateway jwt+allow-all';
const GATEWAY_LIMIT_REDIS = 'zt-gateway jwt+limit redis';
const GATEWAY_LIMIT_MEMORY = 'zt-gateway jwt+limit memory';
const GATEWAY_RISK = 'zt-gateway jwt+risk';

// Header pools (DPoP proofs) are sized from the target's fastest run so far: its rate ×
// the run's duration × this margin (later rounds run faster than a cold warm-up; other
// tenants come and go), and never below BASELINE_SHARE of the bare proxy's fastest rate,
// first runs included (a JIT-cold warm-up can run at half the speed of the first round,
// and a gateway round can outrun a bare-proxy round when a neighbour's burst hit the
// latter), and never below FIRST_POOL. A single-use pool that runs dry makes
// the gateway refuse the replayed proofs, and the run fails.
const POOL_MARGIN = 1.5;
const BASELINE_SHARE = 1.2;
const FIRST_POOL = 25_000;
// The verifier microbenchmark: as many calls in flight as the load generator has connections,
// after a warm-up that fills the key cache and JITs the path; enough calls (~1 s of CPU)
// for /proc's 10 ms clock ticks to time the event loop's share.
const VERIFY_OPS = 20_000;
const VERIFY_WARMUP = 2_000;
// The decision-time benchmark (policy-decisions.ts): per policy set, a warm-up then
// rounds of decisions timed one by one (a p99 per round, the median of those reported:
// one round hit by a neighbour's burst does not decide it); about 10 s in all here.
const DECISIONS = { rounds: 5, decisions: 20_000, warmup: 20_000 };
// Each round runs the targets in a new order, shuffled from this seed (the same sequence
// every run), so no target always follows the same neighbour.
const ORDER_SEED = 20261126;
// The limit targets' latency is also taken at this fixed rate, well below the JWT route's
// saturation on a 2-core box (~5,000 req/s), where a stage's cost shows as latency, not queueing.
const FIXED_RATE = 1000;

const { values: flags } = parseArgs({
  options: {
    // Five short rounds rather than three long ones: the per-round ratios' median is what
    // resists a neighbour's burst. 8 targets × (4 + 5 × 6) s, plus minting proofs (RS256 is slow to sign): ~9 minutes.
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '6' },
    warmup: { type: 'string', default: '4' },
    connections: { type: 'string', default: '50' },
    // autocannon, in this process, as every earlier figure was taken; or wrk (see wrk.ts):
    // a third of autocannon's CPU per request, and every gateway reads lower against it.
    generator: { type: 'string', default: 'autocannon' },
    'stage-profile': { type: 'string', default: '6' },
    // Last, reload-1000.ts: one-file edits in a 1,000-policy set under load (about 12 s).
    'policy-reload': { type: 'boolean', default: true },
    // `--only limits`: the rate-limit comparison alone (bare proxy, the JWT route, and the
    // same route with a Redis and an in-memory tier), about 3 minutes. `--only risk`: the
    // risk stage alone (bare proxy, the JWT route with and without it, risk-micro.ts).
    only: { type: 'string' },
  },
});
const positiveInt = (name: string, raw: string): number => {
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`bench: --${name} must be a positive integer\n`);
    process.exit(2);
  }
  return n;
};
const ROUNDS = positiveInt('rounds', flags.rounds);
const DURATION_S = positiveInt('duration', flags.duration);
const WARMUP_S = positiveInt('warmup', flags.warmup);
const CONNECTIONS = positiveInt('connections', flags.connections);
if (flags.only !== undefined && flags.only !== 'limits' && flags.only !== 'risk') {
  process.stderr.write(`bench: --only takes "limits" or "risk", not ${flags.only}\n`);
  process.exit(2);
}
const ONLY_LIMITS = flags.only === 'limits';
const ONLY_RISK = flags.only === 'risk';
const ONLY = ONLY_LIMITS || ONLY_RISK;
const STAGE_PROFILE_S = flags['stage-profile'] === '0' ? 0 : positiveInt('stage-profile', flags['stage-profile']);
// The targets whose stages are profiled: the JWT route, without and with the policy stage
// (with --only limits: without and with a Redis-backed tier).
const PROFILED = ONLY_LIMITS ? [gatewayJwt, gatewayLimitRedis] : ONLY_RISK ? [gatewayJwt, gatewayRisk] : [gatewayJwt, gatewayPolicies, gatewayAllowAll];
const PIPELINING = 1;
const GENERATOR = chooseGenerator(flags.generator);

function chooseGenerator(requested: string): 'wrk' | 'autocannon' {
  if (requested === 'autocannon') return 'autocannon';
  if (requested === 'wrk') {
    if (wrkOnPath()) return 'wrk';
    process.stderr.write('bench: --generator wrk, but there is no wrk on PATH (Debian/Ubuntu: apt-get install wrk)\n');
    process.exit(2);
  }
  process.stderr.write(`bench: --generator must be autocannon or wrk, not ${requested}\n`);
  process.exit(2);
}

class BenchFailure extends Error {}

/** One measured run: the load generator's figures and the serving process's CPU time per response (undefined without /proc). */
type RoundResult = LoadResult & { readonly cpuUsPerRequest: number | undefined };

const children = new ChildSet();
let tmpDir: string | undefined;
let cleaning: Promise<void> | undefined;
let redis: RedisProcess | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await children.stopAll();
    await redis?.stop();
    if (tmpDir !== undefined) await rm(tmpDir, { recursive: true, force: true });
  })();
  return cleaning;
}

// Last resort: whatever path we leave by, no child outlives us.
process.on('exit', () => children.killAllNow());
for (const [sig, num] of [['SIGINT', 2], ['SIGTERM', 15]] as const) {
  process.once(sig, () => {
    process.stderr.write(`\nbench: ${sig}, stopping children ${children.pids.join(' ')}\n`);
    void cleanup().finally(() => process.exit(128 + num));
  });
}

const log = (msg: string): void => void process.stderr.write(`${msg}\n`);

async function main(): Promise<void> {
  // Before any server starts, so nothing competes with it for CPU.
  let decisions = '';
  let risk = '';
  if (!ONLY_LIMITS) {
    log('risk stage, in process (test/bench/risk-micro.ts) …');
    risk = formatRisk(riskMicro());
    log(risk);
  }
  if (!ONLY) {
    log('policy decision time, in process …');
    decisions = formatDecisionResults(measurePolicyDecisions(DECISIONS), DECISIONS);
    log(decisions);
  }

  const targets: ((fx: BenchFixture) => Target)[] = ONLY_LIMITS
    ? [bareProxy, gatewayJwt, gatewayLimitRedis, gatewayLimitMemory]
    : ONLY_RISK
      ? [bareProxy, gatewayJwt, gatewayRisk]
      : [
        echoDirect,
        bareProxy,
        gatewayJwt,
        bareProxyPerRequestHeaders,
        gatewayDpop,
        (fx: BenchFixture) => gatewayDpop(fx, 'RS256'),
        gatewayPolicies,
        gatewayAllowAll,
        gatewayLimitRedis,
        gatewayLimitMemory,
        gatewayRisk,
      ];
  // Start-up, warm-up, rounds, and slack: minting proofs before every run (RS256 signing
  // takes ~20 s for a round's pool here) and stopping; past this something is wedged.
  const profiledS = STAGE_PROFILE_S === 0 ? 0 : PROFILED.length * (WARMUP_S + STAGE_PROFILE_S + 40);
  const fixedRateS = 4 * ROUNDS * (DURATION_S + 5);
  const budgetMs = (targets.length * (WARMUP_S + ROUNDS * DURATION_S) + (ROUNDS + 1) * 60 + 180 + profiledS + fixedRateS) * 1000;
  const overall = setTimeout(() => {
    log(`\nBENCH FAILED: run exceeded its ${budgetMs / 1000} s budget`);
    void cleanup().finally(() => process.exit(1));
  }, budgetMs);

  tmpDir = await mkdtemp(join(tmpdir(), 'ztgw-bench-'));
  const echo = await children.spawn({
    name: 'echo',
    args: [join(import.meta.dirname, 'echo-server.ts')],
    ready: 'json-line',
  });
  const issuer = await createIssuer({ issuer: 'ztgw-bench', alg: 'ES256' });
  const audience = 'zt-gateway';
  const subject = 'bench';
  const token = await issuer.sign({ groups: ['eng'] }, { sub: subject, aud: audience, expiresIn: '1h' });
  redis = await startRedis();
  const fx: BenchFixture = { children, echoUrl: String(echo.readyLine.url), echoPid: echo.pid, issuer, audience, token, subject, tmpDir, redisUrl: redis.url, redisPid: redis.pid };

  const started: { target: Target; running: RunningTarget }[] = [];
  for (const make of targets) {
    const target = make(fx);
    const running = await target.start();
    started.push({ target, running });
    await preflight(target.name, running);
    log(`started  ${target.name.padEnd(20)} ${running.url}`);
  }

  log(
    `\nnode ${process.version}, ${availableParallelism()} CPUs; ${GENERATOR} ${CONNECTIONS} connections, ` +
      `pipelining ${PIPELINING}, ${WARMUP_S} s warm-up + ${ROUNDS} × ${DURATION_S} s per target, interleaved`,
  );

  // Per target, the highest responses/s seen so far: what its next header pool is sized on.
  const fastest = new Map<string, number>();
  const load = async (name: string, running: RunningTarget, durationS: number, what: string): Promise<RoundResult> => {
    let pool: HeaderPool | undefined;
    let minted = '';
    if (running.headerPool !== undefined) {
      const rate = fastest.get(name);
      const floor = (fastest.get(BASELINE) ?? 0) * BASELINE_SHARE;
      const expectedRate = Math.max((rate ?? 0) * POOL_MARGIN, floor);
      // Never below FIRST_POOL either: a warm-up of the bare proxy on a host busy with
      // other tenants read 1,362 req/s here, and the DPoP warm-up then outran its pool.
      const count = Math.max(FIRST_POOL, Math.ceil(expectedRate * durationS) + CONNECTIONS);
      const t0 = performance.now();
      pool = await running.headerPool(count, durationS);
      minted = `  (${pool.sets.length} proofs minted in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    }
    const cpuBefore = processCpuMicros(running.pid);
    const helperBefore = running.helperPid && processCpuMicros(running.helperPid.pid);
    const loadOptions: LoadOptions = {
      url: running.url,
      headers: await running.headers(),
      connections: CONNECTIONS,
      pipelining: PIPELINING,
      durationS,
      title: name,
      headerPool: pool,
    };
    const result = GENERATOR === 'wrk' ? await runWrk({ ...loadOptions, poolFile: join(tmpDir!, 'wrk-pool.txt') }) : await runAutocannon(loadOptions);
    const cpuAfter = processCpuMicros(running.pid);
    const helperAfter = running.helperPid && processCpuMicros(running.helperPid.pid);
    const cpuUsPerRequest = cpuBefore === undefined || cpuAfter === undefined ? undefined : (cpuAfter - cpuBefore) / result.responses;
    const problems = problemsOf(result);
    if (result.overrun > 0 && pool!.singleUse) {
      throw new BenchFailure(
        `${name}, ${what}: its pool of ${pool!.sets.length} DPoP proofs ran out; ${result.overrun} requests re-sent a used proof ` +
          `(${problems ?? 'yet all answered 2xx: the gateway accepted replays!'})`,
      );
    }
    if (problems !== undefined) throw new BenchFailure(`${name}, ${what}: ${problems}`);
    fastest.set(name, Math.max(fastest.get(name) ?? 0, result.responses / durationS));
    if (pool !== undefined) minted += `, ${result.responses} used)`;
    const helperCpu =
      helperBefore === undefined || helperAfter === undefined ? '' : `  (${running.helperPid!.name} ${((helperAfter - helperBefore) / result.responses).toFixed(0)})`;
    const cpu =
      (cpuUsPerRequest === undefined ? '' : `  ${cpuUsPerRequest.toFixed(0)} µs CPU/req${helperCpu}`) +
      `  (load generator ${(result.generatorCpuMicros / result.responses).toFixed(0)})`;
    log(`  ${what.padEnd(8)} ${name.padEnd(20)} ${result.reqPerSec.toFixed(0).padStart(7)} req/s  p50 ${result.p50Ms} ms  p99 ${result.p99Ms} ms${cpu}${minted}`);
    // Let the last run's sockets close before the next target's run starts.
    await sleep(250);
    return { ...result, cpuUsPerRequest };
  };

  for (const { target, running } of started) await load(target.name, running, WARMUP_S, 'warm-up');

  // The risk stage's own time, as the gateway measures it (ztgw_risk_stage_seconds), over the
  // saturated rounds and over the fixed-rate rounds.
  const riskMetrics = started.find(({ target }) => target.name === GATEWAY_RISK)?.running.metricsUrl;
  const stageHistogram = (): Promise<Map<number, number>> | undefined => (riskMetrics === undefined ? undefined : scrapeHistogram(riskMetrics, 'ztgw_risk_stage_seconds'));
  const stageBeforeRounds = await stageHistogram();

  const results = new Map<string, RoundResult[]>(started.map(({ target }) => [target.name, []]));
  const nextRandom = random(ORDER_SEED);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const { target, running } of shuffled(started, nextRandom)) {
      results.get(target.name)!.push(await load(target.name, running, DURATION_S, `round ${round}`));
    }
  }

  const stageAfterRounds = await stageHistogram();

  // The limit targets' latency below saturation: open loop at a fixed rate, interleaved.
  const fixedRate = new Map<string, FixedRateResult[]>();
  const atRate = started.filter(({ target }) => [GATEWAY, GATEWAY_LIMIT_REDIS, GATEWAY_LIMIT_MEMORY, GATEWAY_RISK].includes(target.name));
  for (let round = 1; atRate.length > 1 && round <= ROUNDS; round++) {
    for (const { target, running } of shuffled(atRate, nextRandom)) {
      const r = await runFixedRate({ url: running.url, headers: await running.headers(), ratePerS: FIXED_RATE, durationS: DURATION_S, connections: CONNECTIONS });
      if (r.ok !== r.sent) throw new BenchFailure(`${target.name}, fixed rate round ${round}: ${r.sent - r.ok} of ${r.sent} requests not answered 2xx`);
      log(`  ${`rate ${round}`.padEnd(8)} ${target.name.padEnd(20)} ${FIXED_RATE} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms`);
      fixedRate.set(target.name, [...(fixedRate.get(target.name) ?? []), r]);
      await sleep(250);
    }
  }

  const stageAfterRate = await stageHistogram();
  const stageLine = (what: string, before: Map<number, number> | undefined, after: Map<number, number> | undefined): string => {
    const q = (p: number): string => {
      const r = before && after && quantileBetween(before, after, p);
      return r === undefined ? '–' : r.bound === Infinity ? '> 100 ms' : `≤ ${(r.bound * 1000).toFixed(2)} ms`;
    };
    const n = before && after ? (after.get(Infinity) ?? 0) - (before.get(Infinity) ?? 0) : 0;
    return `  ${what}: p50 ${q(0.5)}, p99 ${q(0.99)} over ${n} scored requests (target p99 ≤ 1 ms)\n`;
  };
  const stageLines =
    riskMetrics === undefined
      ? ''
      : `risk stage time inside the gateway (ztgw_risk_stage_seconds: extraction, waiting for its batch, the model run; bucket bounds):\n` +
        stageLine(`saturated rounds (${CONNECTIONS} connections)`, stageBeforeRounds, stageAfterRounds) +
        stageLine(`at a fixed ${FIXED_RATE} req/s`, stageAfterRounds, stageAfterRate);

  for (const { running } of started.reverse()) await running.stop();

  // One profiled run per JWT-route gateway, alone on the machine but for the echo upstream.
  const stages: { name: string; shares: StageShare[] }[] = [];
  for (const make of STAGE_PROFILE_S === 0 ? [] : PROFILED) {
    const target = make(fx);
    const profileDir = join(tmpDir, `cpu-profile-${stages.length}`);
    const running = await target.start({ nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] });
    await preflight(target.name, running);
    // The profile counts from the first request (the preflight): warm-up and run both count.
    const warm = await load(target.name, running, WARMUP_S, 'profile warm-up');
    const run = await load(target.name, running, STAGE_PROFILE_S, 'profile');
    await running.stop();
    stages.push({ name: target.name, shares: stageShares(await readProfile(profileDir), 1 + warm.responses + run.responses) });
  }

  // With the servers gone, so nothing competes with it for CPU.
  const verify = await measureDpopVerify({ ops: VERIFY_OPS, warmup: VERIFY_WARMUP, concurrency: CONNECTIONS, accessToken: token, maxAgeS: DPOP_MAX_AGE_S });
  clearTimeout(overall);

  const summaries = new Map([...results].map(([name, rounds]) => [name, summarize(rounds)]));
  const baseline = summaries.get(BASELINE)!.reqPerSec;
  // Median CPU µs per request of a target's server process; '–' without /proc.
  const cpuOf = (name: string): number | undefined => {
    const values = results.get(name)!.flatMap((r) => (r.cpuUsPerRequest === undefined ? [] : [r.cpuUsPerRequest]));
    return values.length === 0 ? undefined : median(values);
  };
  const cpuText = (name: string): string => cpuOf(name)?.toFixed(0) ?? '–';
  const rows = [...summaries].map(([name, s]) => [
    name,
    s.reqPerSec.toFixed(0),
    s.p50Ms.toFixed(1),
    s.p99Ms.toFixed(1),
    (s.reqPerSec / baseline).toFixed(2),
    cpuText(name),
    s.rounds.map((r) => r.reqPerSec.toFixed(0)).join(' / '),
  ]);
  const responses = [...results.values()].flat().reduce((n, r) => n + r.responses, 0);
  const jwtRps = summaries.get(GATEWAY)!.reqPerSec;
  // The same ratio taken within each round (targets measured seconds apart) and then the
  // median: drift of the shared machine between rounds cancels out, which the ratio of the
  // two medians does not. Both are printed.
  const perRound = (target: string, base: string): string => {
    const a = results.get(target)!;
    const b = results.get(base)!;
    return median(a.map((r, i) => r.reqPerSec / b[i]!.reqPerSec)).toFixed(2);
  };
  // A rate-limit tier's cost against the same route without one: throughput ratio, and the
  // latency it adds, each as the median over rounds of the within-round difference.
  const limitLine = (target: string, ratioTarget = 'target ≥ 0.85'): string => {
    if (!results.has(target)) return '';
    const a = results.get(target)!;
    const b = results.get(GATEWAY)!;
    const added = (key: 'p50Ms' | 'p99Ms'): string => median(a.map((r, i) => r[key] - b[i]![key])).toFixed(2);
    return `${target}/jwt ratio: ${(summaries.get(target)!.reqPerSec / jwtRps).toFixed(2)} / ${perRound(target, GATEWAY)} (${ratioTarget}); added p50 ${added('p50Ms')} ms, added p99 ${added('p99Ms')} ms (target ≤ 1 ms)\n`;
  };
  // Below saturation: each target's median p50/p99 over the fixed-rate rounds, and the added
  // latency as the median of within-round differences to the route without the tier.
  const rateLine = (target: string): string => {
    const a = fixedRate.get(target);
    const b = fixedRate.get(GATEWAY);
    if (a === undefined || b === undefined) return '';
    const added = (key: 'p50Ms' | 'p99Ms'): string => median(a.map((r, i) => r[key] - b[i]![key])).toFixed(2);
    return `  ${target}: p50 ${median(a.map((r) => r.p50Ms)).toFixed(2)} ms, p99 ${median(a.map((r) => r.p99Ms)).toFixed(2)} ms; added p50 ${added('p50Ms')} ms, added p99 ${added('p99Ms')} ms (target ≤ 1 ms)\n`;
  };
  const rateLines =
    fixedRate.size === 0
      ? ''
      : `at a fixed ${FIXED_RATE} req/s, open loop (latency from each request's scheduled time; medians of ${ROUNDS} rounds):\n` +
        `  ${GATEWAY}: p50 ${median(fixedRate.get(GATEWAY)!.map((r) => r.p50Ms)).toFixed(2)} ms, p99 ${median(fixedRate.get(GATEWAY)!.map((r) => r.p99Ms)).toFixed(2)} ms\n` +
        rateLine(GATEWAY_LIMIT_REDIS) +
        rateLine(GATEWAY_LIMIT_MEMORY) +
        rateLine(GATEWAY_RISK);
  const limitLines = `ratios: of medians / median of per-round ratios\n${limitLine(GATEWAY_LIMIT_REDIS)}${limitLine(GATEWAY_LIMIT_MEMORY)}${limitLine(GATEWAY_RISK, 'no target')}${rateLines}${stageLines}`;
  const table = `\n${formatTable(['target', 'req/s', 'p50 ms', 'p99 ms', 'vs bare', 'CPU µs/req', 'req/s per round'], rows)}\n\n` +
    `all ${responses} measured responses 2xx, no errors (medians of ${ROUNDS} rounds)\n`;
  if (ONLY) {
    process.stdout.write(table + limitLines + (stages.length === 0 ? '' : `\n${formatStageShares(stages)}\n`) + (risk === '' ? '' : `\n${risk}`));
    return;
  }
  const dpopRps = summaries.get(GATEWAY_DPOP)!.reqPerSec;
  const policiesRps = summaries.get(GATEWAY_POLICIES)!.reqPerSec;
  const allowAllRps = summaries.get(GATEWAY_ALLOW_ALL)!.reqPerSec;
  process.stdout.write(
    table +
      `dpop verify: ${verify.cpuUs.toFixed(0)} µs CPU/op, ${verify.eventLoopUs?.toFixed(0) ?? '–'} of it on the event loop (in process, ${VERIFY_OPS} verify() calls, ${CONNECTIONS} in flight, memory replay cache)\n` +
      `dpop per request under load: ${(1e6 / dpopRps - 1e6 / jwtRps).toFixed(0)} µs (1e6/rps(dpop) − 1e6/rps(jwt))\n` +
      `ratios: of medians / median of per-round ratios\n` +
      `gateway/bare ratio: ${(jwtRps / baseline).toFixed(2)} / ${perRound(GATEWAY, BASELINE)} (target ≥ 0.85)\n` +
      `gateway dpop/bare ratio: ${(dpopRps / baseline).toFixed(2)} / ${perRound(GATEWAY_DPOP, BASELINE)}; against the bare proxy loaded with per-request headers like it: ${(dpopRps / summaries.get(BARE_PER_REQUEST)!.reqPerSec).toFixed(2)} / ${perRound(GATEWAY_DPOP, BARE_PER_REQUEST)} (target ≥ 0.50)\n` +
      `gateway dpop (RS256 proofs)/bare ratio: ${(summaries.get('zt-gateway dpop RS256')!.reqPerSec / baseline).toFixed(2)} / ${perRound('zt-gateway dpop RS256', BASELINE)}\n` +
      `policies/allow-all ratio: ${(policiesRps / allowAllRps).toFixed(2)} / ${perRound(GATEWAY_POLICIES, GATEWAY_ALLOW_ALL)} (target ≥ 0.90)\n` +
      limitLine(GATEWAY_LIMIT_REDIS) +
      limitLine(GATEWAY_LIMIT_MEMORY) +
      limitLine(GATEWAY_RISK, 'no target') +
      rateLines +
      stageLines +
      `CPU µs/req is the serving process's own (all its threads, medians of rounds): bare proxy ${cpuText(BASELINE)}, ` +
      `gateway jwt ${cpuText(GATEWAY)}, gateway dpop ${cpuText(GATEWAY_DPOP)}; the echo upstream and ${GENERATOR} (load generator) use the rest of the cores\n` +
      (stages.length === 0 ? '' : `\n${formatStageShares(stages)}\n`) +
      `\n${decisions}` +
      `\n${risk}`,
  );
}

/** Parts × profiled targets: µs of the main thread per response, and its share of the busy time. */
function formatStageShares(stages: readonly { name: string; shares: readonly StageShare[] }[]): string {
  const parts = [...new Set(stages.flatMap((s) => s.shares.map((r) => r.part)))];
  const rows = parts.map((part) => [
    part,
    ...stages.map(({ shares }) => {
      const r = shares.find((x) => x.part === part);
      return r === undefined ? '–' : `${r.usPerResponse.toFixed(1)} (${(r.share * 100).toFixed(1)}%)`;
    }),
  ]);
  const busy = stages.map(({ shares }) => shares.reduce((n, r) => n + r.usPerResponse, 0).toFixed(0));
  return (
    `CPU per response by pipeline stage (main thread, µs (share of busy); --cpu-prof, ${STAGE_PROFILE_S} s after a ${WARMUP_S} s warm-up, profiler overhead included):\n` +
    formatTable(['part', ...stages.map((s) => s.name)], [...rows, ['busy', ...busy]])
  );
}

/** `items` in a random order (Fisher-Yates) drawn from `next`. */
function shuffled<T>(items: readonly T[], next: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** One request before any load, so a misconfigured target fails in a second with its answer, not after a 10 s run of 401s. */
async function preflight(name: string, running: RunningTarget): Promise<void> {
  const perRequest = (await running.headerPool?.(1, 1))?.sets[0];
  const res = await fetch(running.url, { headers: { ...(await running.headers()), ...perRequest }, signal: AbortSignal.timeout(5_000) });
  const body = await res.text();
  if (res.status < 200 || res.status > 299) {
    throw new BenchFailure(`${name}: preflight GET ${running.url} answered ${res.status}: ${body.slice(0, 500)}`);
  }
}

/** risk-micro.ts in its own process, with --expose-gc for the memory figure; bounded. */
function riskMicro(): RiskMicroResult {
  const out = spawnSync(process.execPath, ['--expose-gc', join(import.meta.dirname, 'risk-micro.ts')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 180_000 });
  if (out.status !== 0) throw new BenchFailure(`risk-micro.ts exited ${out.status ?? out.signal}`);
  return JSON.parse(out.stdout) as RiskMicroResult;
}

/** reload-1000.ts in its own process (its gateway and load must not share this one's loop); bounded. */
function policyReloadBench(): void {
  log('\npolicy reload: one-file edits in a 1,000-policy set under load (test/bench/reload-1000.ts)');
  const out = spawnSync(process.execPath, [join(import.meta.dirname, 'reload-1000.ts')], { stdio: 'inherit', timeout: 120_000 });
  if (out.status !== 0) throw new BenchFailure(`reload-1000.ts exited ${out.status ?? out.signal}`);
}

try {
  await main();
  await cleanup();
  if (flags['policy-reload'] && !ONLY) policyReloadBench();
} catch (err) {
  const message = err instanceof BenchFailure ? err.message : ((err as Error).stack ?? String(err));
  log(`\n${'!'.repeat(72)}\nBENCH FAILED: ${message}\n${'!'.repeat(72)}`);
  await cleanup();
  process.exit(1);
}
