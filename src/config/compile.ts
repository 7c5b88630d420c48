// Config → Runtime. Everything expensive or fallible happens here, once: parsing keys,
// building the routes table, compiling trust rules. The request path reads only the
// frozen Runtime it started with; a reload compiles a new one and swaps the reference.
import proxyaddr from 'proxy-addr';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { Config, RouteConfig } from './schema.ts';
import type { CompiledRoute, RequestContext, Stage } from '../pipeline/context.ts';
import { compileIssuer, type CompiledIssuer } from '../identity/issuers.ts';
import { createTokenCache, type TokenCache } from '../identity/token-cache.ts';
import { compileAuthorities, createHygieneStage } from '../pipeline/hygiene.ts';
import { createRouteStage } from '../pipeline/route.ts';
import { canonicalPrefix } from '../core/paths.ts';
import { createAuthnStage } from '../pipeline/authn.ts';
import { pipelineOf, type PipelineStages } from '../pipeline/run.ts';
import { createDeviceStage } from '../pipeline/device.ts';
import { createAssertionStage } from '../pipeline/assertion.ts';
import { createAssertionSigner, loadSigningKeys, type AssertionSigner } from '../identity/assertion.ts';
import { createDpopVerifier, DPOP_FAILURE_LABELS, type DpopFailureLabel, type DpopVerifier } from '../identity/dpop.ts';
import { compileForwardingPolicy, type ForwardingPolicy } from '../pipeline/upstream-headers.ts';
import { compileDenyList, type HeaderDenyList } from '../upstream/header-deny-list.ts';
import { compileResponsePolicy } from '../pipeline/response-headers.ts';
import { createUpstreamGuard, type UpstreamGuard } from '../pipeline/upstream-guard.ts';
import type { UpstreamBase } from '../upstream/location.ts';
import type { Services } from './services.ts';
import { compileTiers, type CompiledTier } from '../limits/tiers.ts';
import { createLimitStage } from '../pipeline/limit.ts';
import { compileUpstreams, routeUpstreamName, type CompiledEndpoint, type CompiledUpstream } from './upstreams.ts';
import type { Logger } from 'pino';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { createAuthzStage } from '../pipeline/authz.ts';
import { compileRecordLimits, type RecordLimits } from '../policy/record-limits.ts';
import { createLineBudget, type LineBudget } from '../observability/line-budget.ts';
import { createEvaluator, type Evaluator } from '../policy/evaluate.ts';
import { loadPolicyDirAsync, type KnownNames, type PolicyFileCache } from '../policy/load.ts';
import { ConfigError, type ConfigIssue } from '../core/diagnostics.ts';
import { stableJson } from './reload.ts';
import { compileRisk, type RuntimeRisk } from './risk.ts';
import { createRiskStage } from '../pipeline/risk.ts';

export interface Runtime {
  readonly config: Readonly<Config>;
  /** Short content hash of the config, for logs: which config served a request. */
  readonly version: string;
  readonly routes: readonly CompiledRoute[];
  readonly issuers: readonly CompiledIssuer[];
  readonly stages: readonly Stage[];
  /** Is this peer (at this hop) a trusted proxy? proxy-addr's compiled matcher. */
  readonly trust: (addr: string, hop: number) => boolean;
  readonly forwarding: ForwardingPolicy;
  readonly assertions: AssertionSigner;
  /** The policy set compiled against this config, when it has a policies section. */
  readonly policies: RuntimePolicies | undefined;
  /** Every upstream a request can reach (named ones, and one per URL route), defaults applied. */
  readonly upstreams: ReadonlyMap<string, CompiledUpstream>;
  /**
   * Breakers, endpoint picker, bulkheads and retry budgets of those upstreams, built with the
   * previous Runtime's guard (state survives a reload); gateway.ts shuts the replaced one down.
   */
  readonly upstreamGuard: UpstreamGuard;
  /** The anomaly model and the feature histories, when the config has an enabled risk section. */
  readonly risk: RuntimeRisk | undefined;
  /** The data plane's certificate material as read for this Runtime (rotation: re-read on reload). */
  readonly tls: TlsMaterial | undefined;
  /** What the next compile may reuse, each under the key of what it was built from. */
  readonly parts: RuntimeParts;
}

export interface RuntimePolicies {
  readonly dir: string;
  readonly evaluator: Evaluator;
  readonly warnings: readonly ConfigIssue[];
  /** Compiled files by text, handed from Runtime to Runtime: an edit recompiles only what changed. */
  readonly files: PolicyFileCache;
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca?: Buffer;
}

/** A part and the stable JSON of the config it was built from: equal key, same part. */
export interface Keyed<T> {
  readonly key: string;
  readonly value: T;
}

export interface RuntimeParts {
  /** By issuer config; issuers with a jwksFile are rebuilt each time (the file may have rotated). */
  readonly issuers: ReadonlyMap<string, CompiledIssuer>;
  /** Verified tokens; reused only when every issuer was reused and identity.tokenCache is unchanged. */
  readonly tokenCache: Keyed<TokenCache>;
  /** The DPoP verifier and its key caches, by identity.dpop (the replay cache is a process service). */
  readonly dpop: Keyed<DpopVerifier>;
  /** The assertion signer and its reusable assertions, by the assertion section and the signing keys. */
  readonly assertions: Keyed<AssertionSigner>;
  /** The stages by name: a policy edit replaces `authz` and keeps the rest (compilePolicyEdit). */
  readonly pipeline: PipelineStages;
  /** What the policy stage keeps across sets, by policies.decisionLog: each principal's line budget carries over an edit. */
  readonly decisionLines: Keyed<DecisionLines> | undefined;
}

/** The decision log's limits, built from policies.decisionLog. */
export interface DecisionLines {
  readonly recordLimits: RecordLimits;
  readonly lineBudget: LineBudget;
}

/** The one mutable reference: reloads swap it, requests read it once at their start. */
export interface RuntimeHolder {
  current: Runtime;
}

export interface CompileDeps {
  /** Directory relative paths in the config resolve against. */
  readonly configDir: string;
  /** Process-lifetime resources (Redis, registry, replay cache) the stages use. */
  readonly services: Pick<Services, 'registry' | 'replayCache' | 'fingerprints' | 'ephemeralKey' | 'rateLimits' | 'riskFeatures'>;
  /** The Runtime being replaced: its parts whose config did not change are reused. */
  readonly previous?: Runtime;
  /** Where decision lines go (unredacted: their fields are chosen, credentials excluded). */
  readonly decisionLog: Logger;
  /** The gateway's log (security events such as DPoP refusals). */
  readonly logger: Logger;
  readonly metrics: Pick<
    GatewayMetrics,
    | 'policyDecisions'
    | 'policyRuleErrors'
    | 'decisionLinesSuppressed'
    | 'dpopFailures'
    | 'rateLimitChecks'
    | 'breakerState'
    | 'upstreamRefusals'
    | 'upstreamRetries'
    | 'riskScore'
    | 'riskFlagged'
    | 'riskUnscored'
    | 'riskBatchRows'
    | 'riskStageSeconds'
    | 'riskModelUp'
    | 'riskModelLoads'
  >;
  readonly now?: () => number;
}

/** The endpoint of best priority: what a request goes to while no breaker or failover says otherwise. */
function preferredEndpoint(upstream: CompiledUpstream): CompiledEndpoint {
  return upstream.endpoints.reduce((best, e) => (e.priority < best.priority ? e : best));
}

function compileRoute(
  route: RouteConfig,
  config: Config,
  upstreams: ReadonlyMap<string, CompiledUpstream>,
  endpointBases: ReadonlyMap<string, readonly UpstreamBase[]>,
  tiers: ReadonlyMap<string, CompiledTier>,
  sharedDenyList: HeaderDenyList,
  logger: Logger,
): CompiledRoute {
  const upstreamName = routeUpstreamName(route);
  const preferred = preferredEndpoint(upstreams.get(upstreamName)!);
  const pathPrefix = canonicalPrefix(route.pathPrefix);
  return Object.freeze({
    name: route.name,
    hosts: route.hosts === undefined || route.hosts.includes('*') ? undefined : Object.freeze(route.hosts.map((h) => h.toLowerCase())),
    pathPrefix,
    upstream: upstreamName,
    limits: Object.freeze(route.limits.map((name) => tiers.get(name)!)),
    rateLimiting: route.rateLimiting,
    upstreamOrigin: preferred.origin,
    upstreamBasePath: preferred.basePath,
    stripPrefix: route.stripPrefix,
    caseInsensitive: route.caseInsensitive,
    public: route.public,
    issuers: Object.freeze(route.issuers ?? config.identity.issuers.map((i) => i.name)),
    timeoutMs: route.timeoutMs ?? config.server.timeouts.upstreamMs,
    circuitBreaker: route.circuitBreaker,
    websocket: route.websocket,
    deviceBinding: route.device.binding,
    requireEnrolledDevice: route.device.requireEnrolled,
    forwardAuthorization: route.forwardAuthorization,
    // Routes without opt-ins share one list (and its memo of names seen).
    denyList:
      route.forwardHeaders.length === 0
        ? sharedDenyList
        : compileDenyList({ extra: denyExtra(config), allow: route.forwardHeaders }),
    response: compileResponsePolicy({
      routeName: route.name,
      // As pipeline/route.ts upstreamPathFor builds upstream paths: "/" has nothing to strip.
      mapping: { prefix: pathPrefix, strips: route.stripPrefix && pathPrefix !== '/' },
      upstream: { origin: preferred.origin, basePath: preferred.basePath },
      endpoints: { routeUpstream: upstreamName, of: endpointBases },
      response: route.response,
      bannerHeaders: config.server.bannerHeaders,
      onMalformedCookie: (ctx, reason) => logger.debug({ reqId: ctx.id, route: route.name, reason }, 'malformed set-cookie dropped'),
    }),
  });
}

/** server.stripHeaders and the assertion header join the built-in deny list. */
function denyExtra(config: Config): string[] {
  return [...config.server.stripHeaders, config.assertion.header];
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * The names policies may refer to, from the config they will run with. A part that policies
 * name (rate-limit tiers, anomaly models) adds its names here and nowhere else: the policy
 * set is then checked against them on every compile, config reload and policy edit alike.
 */
export function knownPolicyNames(config: Config): KnownNames {
  return {
    tiers: new Set(Object.keys(config.limits.tiers)),
    upstreams: new Set(Object.keys(config.upstreams)),
    routes: new Set(config.routes.map((r) => r.name)),
  };
}

/**
 * Throws ConfigError (policy file:line:col) when the set does not load against this config's
 * names. Gives the event loop back between slices of work: requests go on meanwhile.
 */
async function compilePolicies(config: Config, configDir: string, previous: RuntimePolicies | undefined): Promise<RuntimePolicies | undefined> {
  if (config.policies === undefined) return undefined;
  const dir = resolve(configDir, config.policies.dir);
  // Shared with the running Runtime on purpose: an entry is a pure function of a file's
  // path, text and the names it was checked against, so a refused compile cannot spoil it.
  const files = previous?.files ?? new Map();
  let loaded: Awaited<ReturnType<typeof loadPolicyDirAsync>>;
  try {
    loaded = await loadPolicyDirAsync(dir, knownPolicyNames(config), files);
  } catch (err) {
    // load.ts refuses bad text without throwing; this is for what nobody foresaw.
    const message = `the policy set could not be compiled (${err instanceof Error ? err.message : String(err)})`;
    throw new ConfigError([{ file: dir, line: 1, col: 1, field: '', message }]);
  }
  if (!loaded.ok) throw new ConfigError(loaded.issues);
  // The hash covers every file's name and text; the names it refers to were checked just now.
  const evaluator = previous?.evaluator.set.hash === loaded.set.hash ? previous.evaluator : createEvaluator(loaded.set);
  return { dir, evaluator, warnings: loaded.warnings, files };
}

/** Reads and checks the certificate files; a bad one refuses the compile (a reload keeps the last good). */
function readTls(tls: Config['server']['tls'], configDir: string): TlsMaterial | undefined {
  if (tls === undefined) return undefined;
  const files = [tls.certFile, tls.keyFile, tls.clientCaFile].filter((f) => f !== undefined).map((f) => resolve(configDir, f));
  const material: TlsMaterial = {
    cert: readFileSync(resolve(configDir, tls.certFile)),
    key: readFileSync(resolve(configDir, tls.keyFile)),
    ...(tls.clientCaFile === undefined ? {} : { ca: readFileSync(resolve(configDir, tls.clientCaFile)) }),
  };
  try {
    createSecureContext(material);
  } catch (err) {
    throw new Error(`server.tls: ${files.join(', ')}: ${(err as Error).message}`, { cause: err });
  }
  return material;
}

function reuse<T>(previous: Keyed<T> | undefined, key: string, build: () => T): Keyed<T> {
  return previous?.key === key ? previous : { key, value: build() };
}

export async function compileRuntime(config: Config, deps: CompileDeps): Promise<Runtime> {
  const frozen = deepFreeze(structuredClone(config));
  const now = deps.now ?? Date.now;
  const version = createHash('sha256').update(JSON.stringify(frozen)).digest('hex').slice(0, 12);
  const previous = deps.previous?.parts;
  const policies = await compilePolicies(frozen, deps.configDir, deps.previous?.policies);
  const tls = readTls(frozen.server.tls, deps.configDir);
  const issuerParts = new Map<string, CompiledIssuer>();
  const issuers = frozen.identity.issuers.map((i) => {
    const key = stableJson([i, deps.configDir]);
    const issuer = (i.jwksFile === undefined ? previous?.issuers.get(key) : undefined) ?? compileIssuer(i, { configDir: deps.configDir });
    issuerParts.set(key, issuer);
    return issuer;
  });
  // A cached verification is only as good as the issuers that made it.
  const sameIssuers = deps.previous !== undefined && issuers.length === deps.previous.issuers.length && issuers.every((i, n) => i === deps.previous!.issuers[n]);
  const tokenCache = reuse(sameIssuers ? previous?.tokenCache : undefined, stableJson(frozen.identity.tokenCache), () => createTokenCache(frozen.identity.tokenCache));
  const sharedDenyList = compileDenyList({ extra: denyExtra(frozen) });
  const upstreams = compileUpstreams(frozen);
  const tiers = compileTiers(frozen.limits);
  // Every endpoint of every upstream, for Location rewriting (whichever endpoint answered).
  const endpointBases = new Map([...upstreams.values()].map((u) => [u.name, u.endpoints.map((e) => ({ origin: e.origin, basePath: e.basePath }))]));
  const routes = frozen.routes.map((r) => compileRoute(r, frozen, upstreams, endpointBases, tiers, sharedDenyList, deps.logger));
  const trust = proxyaddr.compile([...frozen.server.trustedProxies]);
  const dpop = frozen.identity.dpop;
  const signingKeys = await loadSigningKeys(frozen.assertion, deps.configDir, deps.services.ephemeralKey);
  // Reused while its settings and keys are the same: a reload does not make every principal's
  // next request pay for a new signature (~200 µs each).
  const assertions = reuse(previous?.assertions, stableJson([frozen.assertion, signingKeys.map((k) => k.publicJwk)]), () =>
    createAssertionSigner(frozen.assertion, signingKeys),
  );
  // Every reason shows as a series from the start, so a rate() alert on jti_replay works
  // before the first replay.
  for (const reason of DPOP_FAILURE_LABELS) deps.metrics.dpopFailures.inc({ reason }, 0);
  const onDpopFailure = (ctx: RequestContext, reason: DpopFailureLabel): void => {
    deps.metrics.dpopFailures.inc({ reason });
    // The nonce round trip (RFC 9449 §8) is normal traffic; the rest is a client bug or an attack.
    const level = reason === 'nonce' || reason === 'nonce_missing' ? 'info' : 'warn';
    deps.logger[level]({ reqId: ctx.id, route: ctx.route?.name, reason }, 'dpop proof refused');
  };
  const dpopVerifier = reuse(previous?.dpop, stableJson(dpop), () =>
    createDpopVerifier({
      algorithms: [...dpop.algorithms],
      maxAgeS: dpop.maxAgeS,
      futureSkewS: dpop.futureSkewS,
      replay: deps.services.replayCache,
      nonce: dpop.nonce && { secret: new TextEncoder().encode(dpop.nonce.secret), windowS: dpop.nonce.windowS },
      now,
    }),
  );
  const decisionLines = decisionLinesFor(frozen, previous?.decisionLines);
  // Late, after what can refuse the compile: a new model is loaded only for a Runtime that
  // will be swapped in (gateway.ts closes the replaced one).
  const risk = await compileRisk(frozen, {
    configDir: deps.configDir,
    extractor: deps.services.riskFeatures,
    previous: deps.previous?.risk,
    logger: deps.logger,
    metrics: deps.metrics,
  });
  const pipeline: PipelineStages = {
    hygiene: createHygieneStage({
      trust,
      maxBodyBytes: frozen.server.limits.maxBodyBytes,
      authorities: compileAuthorities(frozen.server.publicOrigins, frozen.routes.flatMap((r) => (r.hosts ?? []).filter((h) => h !== '*'))),
      headersWithUnderscores: frozen.server.headersWithUnderscores,
    }),
    route: createRouteStage(routes),
    authn: createAuthnStage({
      issuers: new Map(issuers.map((i) => [i.issuer, i])),
      cache: tokenCache.value,
      dpopAlgorithms: dpop.algorithms,
      now,
    }),
    device: createDeviceStage({
      dpop: dpopVerifier.value,
      registry: deps.services.registry,
      fingerprints: deps.services.fingerprints,
      staleAfterS: frozen.devices.staleAfterS,
      soleIssuer: frozen.identity.issuers.length === 1 ? frozen.identity.issuers[0]!.issuer : undefined,
      dpopAlgorithms: dpop.algorithms,
      onDpopFailure,
      now,
    }),
    risk: risk === undefined ? undefined : createRiskStageFor(risk, deps),
    authz: policies === undefined ? undefined : createPolicyStage(frozen, policies.evaluator, decisionLines!.value, deps),
    limit: createLimitStage({
      store: deps.services.rateLimits.store,
      tiers,
      onOutcome: (tier, result) => deps.metrics.rateLimitChecks.inc(tier, result),
    }),
    assertion: createAssertionStage(assertions.value, now),
  };
  // Last, after everything that can refuse the compile: the guard adopts the running one's
  // breakers, and a refused compile must leave them with the running Runtime.
  const upstreamGuard = createUpstreamGuard(upstreams, { metrics: deps.metrics, logger: deps.logger, now }, deps.previous?.upstreamGuard);
  return Object.freeze({
    config: frozen,
    version,
    routes: Object.freeze(routes),
    issuers: Object.freeze(issuers),
    stages: pipelineOf(pipeline),
    trust,
    forwarding: compileForwardingPolicy(frozen.assertion.header),
    assertions: assertions.value,
    policies,
    risk,
    tls,
    upstreams,
    upstreamGuard,
    parts: Object.freeze({ issuers: issuerParts, tokenCache, dpop: dpopVerifier, assertions, pipeline: Object.freeze(pipeline), decisionLines }),
  });
}

function decisionLinesFor(config: Config, previous: Keyed<DecisionLines> | undefined): Keyed<DecisionLines> | undefined {
  const log = config.policies?.decisionLog;
  if (log === undefined) return undefined;
  return reuse(previous, stableJson(log), () => ({
    recordLimits: compileRecordLimits(log.headers),
    lineBudget: createLineBudget({ perSecond: log.perPrincipalPerSecond, burst: log.perPrincipalBurst, maxKeys: 10_000 }),
  }));
}

/**
 * Stage 5 over the Runtime's model. Inference errors are counted per request and logged at
 * the 1st, 10th, 100th… of this Runtime's: a model failing on every request must not write a
 * line per request.
 */
function createRiskStageFor(risk: RuntimeRisk, deps: CompileDeps): Stage {
  let failures = 0;
  let nextLogAt = 1;
  return createRiskStage({
    extractor: risk.extractor,
    batcher: risk.loaded?.batcher,
    threshold: risk.threshold,
    modelVersion: risk.loaded?.model.version,
    now: deps.now,
    onScore: (ctx, r, seconds) => {
      const route = ctx.route!.name;
      deps.metrics.riskScore.series(route).observe(r.score);
      deps.metrics.riskStageSeconds.observe(seconds);
      if (r.flagged) deps.metrics.riskFlagged.inc(route);
    },
    onUnscored: (ctx, reason, err) => {
      deps.metrics.riskUnscored.inc({ reason });
      if (reason !== 'inference' || ++failures < nextLogAt) return;
      nextLogAt *= 10;
      deps.logger.error({ reqId: ctx.id, failures, err: (err as Error)?.cause ?? err }, 'risk model failed to score; requests go on without a risk score (policies reading it fail closed)');
    },
  });
}

/** Stage 6 for one policy set; everything else it needs comes from the config and lives as long as it. */
function createPolicyStage(config: Config, evaluator: Evaluator, lines: DecisionLines, deps: CompileDeps): Stage {
  return createAuthzStage({
    policies: { current: evaluator },
    upstreams: new Set(Object.keys(config.upstreams)),
    decisionLog: deps.decisionLog,
    allowSampleRate: config.policies?.decisionLog.allowSampleRate ?? 0,
    recordLimits: lines.recordLimits,
    lineBudget: lines.lineBudget,
    onSuppressed: () => deps.metrics.decisionLinesSuppressed.inc(),
    onDecision: (decision) => {
      deps.metrics.policyDecisions.inc(decision.effect);
      for (const e of decision.errors) deps.metrics.policyRuleErrors.inc(e.policy, e.rule);
    },
    now: deps.now,
  });
}

/**
 * A policy-dir edit: the policy set recompiled against the running config, everything else
 * of the running Runtime kept (routes, issuers, the other stages, caches), and a new Runtime
 * that differs only in its policies and its authz stage, for the caller to swap in by the
 * one reference. Recompiling the whole Runtime instead would clone and compile a config of
 * a thousand routes for an edit that cannot change them. Throws as compileRuntime does.
 */
export async function compilePolicyEdit(running: Runtime, deps: CompileDeps): Promise<Runtime> {
  const policies = await compilePolicies(running.config, deps.configDir, running.policies);
  if (policies === undefined || running.policies === undefined) return running; // no section: nothing to recompile
  if (policies.evaluator === running.policies.evaluator) return running; // the same files: nothing to swap
  const pipeline: PipelineStages = Object.freeze({
    ...running.parts.pipeline,
    authz: createPolicyStage(running.config, policies.evaluator, running.parts.decisionLines!.value, deps),
  });
  return Object.freeze({ ...running, policies, stages: pipelineOf(pipeline), parts: Object.freeze({ ...running.parts, pipeline }) });
}
