// Config → Runtime. Everything expensive or fallible happens here, once: parsing keys,
// building the routes table, compiling trust rules. The request path reads only the
// frozen Runtime it started with; a reload compiles a new one and swaps the reference.
import proxyaddr from 'proxy-addr';
import { createHash } from 'node:crypto';
import type { Config, RouteConfig } from './schema.ts';
import type { CompiledRoute, RequestContext, Stage } from '../pipeline/context.ts';
import { compileIssuer, type CompiledIssuer } from '../identity/issuers.ts';
import { createTokenCache } from '../identity/token-cache.ts';
import { compileAuthorities, createHygieneStage } from '../pipeline/hygiene.ts';
import { canonicalPrefix, createRouteStage } from '../pipeline/route.ts';
import { createAuthnStage } from '../pipeline/authn.ts';
import { pipelineOf } from '../pipeline/run.ts';
import { createDeviceStage } from '../pipeline/device.ts';
import { createAssertionStage } from '../pipeline/assertion.ts';
import { createAssertionSigner, loadSigningKeys, type AssertionSigner } from '../identity/assertion.ts';
import { createDpopVerifier, DPOP_FAILURE_LABELS, type DpopFailureLabel } from '../identity/dpop.ts';
import { compileForwardingPolicy, type ForwardingPolicy } from '../upstream/headers.ts';
import { compileDenyList, type HeaderDenyList } from '../upstream/header-deny-list.ts';
import { compileResponsePolicy } from '../upstream/response-headers.ts';
import type { Services } from '../services.ts';
import type { Logger } from 'pino';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { createAuthzStage } from '../pipeline/authz.ts';
import { compileRecordLimits } from '../policy/record-limits.ts';
import { createLineBudget } from '../observability/line-budget.ts';

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
}

/** The one mutable reference: reloads swap it, requests read it once at their start. */
export interface RuntimeHolder {
  current: Runtime;
}

export interface CompileDeps {
  /** Directory relative paths in the config resolve against. */
  readonly configDir: string;
  /** Process-lifetime resources (Redis, registry, replay cache) the stages use. */
  readonly services: Pick<Services, 'registry' | 'replayCache' | 'fingerprints' | 'ephemeralKey' | 'policies'>;
  /** Where decision lines go (unredacted: their fields are chosen, credentials excluded). */
  readonly decisionLog: Logger;
  /** The gateway's log (security events such as DPoP refusals). */
  readonly logger: Logger;
  readonly metrics: Pick<GatewayMetrics, 'policyDecisions' | 'policyRuleErrors' | 'decisionLinesSuppressed' | 'dpopFailures'>;
  readonly now?: () => number;
}

function compileRoute(route: RouteConfig, config: Config, sharedDenyList: HeaderDenyList, logger: Logger): CompiledRoute {
  const upstream = new URL(route.upstream);
  const basePath = upstream.pathname.replace(/\/+$/, '');
  const pathPrefix = canonicalPrefix(route.pathPrefix);
  return Object.freeze({
    name: route.name,
    hosts: route.hosts === undefined || route.hosts.includes('*') ? undefined : Object.freeze(route.hosts.map((h) => h.toLowerCase())),
    pathPrefix,
    upstreamOrigin: upstream.origin,
    upstreamBasePath: basePath,
    stripPrefix: route.stripPrefix,
    caseInsensitive: route.caseInsensitive,
    public: route.public,
    issuers: Object.freeze(route.issuers ?? config.identity.issuers.map((i) => i.name)),
    timeoutMs: route.timeoutMs ?? config.server.timeouts.upstreamMs,
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
      upstream: { origin: upstream.origin, basePath },
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

export async function compileRuntime(config: Config, deps: CompileDeps): Promise<Runtime> {
  const frozen = deepFreeze(structuredClone(config));
  const now = deps.now ?? Date.now;
  const version = createHash('sha256').update(JSON.stringify(frozen)).digest('hex').slice(0, 12);
  const issuers = frozen.identity.issuers.map((i) => compileIssuer(i, { configDir: deps.configDir }));
  const sharedDenyList = compileDenyList({ extra: denyExtra(frozen) });
  const routes = frozen.routes.map((r) => compileRoute(r, frozen, sharedDenyList, deps.logger));
  const trust = proxyaddr.compile([...frozen.server.trustedProxies]);
  const dpop = frozen.identity.dpop;
  const signingKeys = await loadSigningKeys(frozen.assertion, deps.configDir, deps.services.ephemeralKey);
  const assertions = createAssertionSigner(frozen.assertion, signingKeys, version);
  // Every reason shows as a series from the start, so a rate() alert on jti_replay works
  // before the first replay.
  for (const reason of DPOP_FAILURE_LABELS) deps.metrics.dpopFailures.inc({ reason }, 0);
  const onDpopFailure = (ctx: RequestContext, reason: DpopFailureLabel): void => {
    deps.metrics.dpopFailures.inc({ reason });
    // The nonce round trip (RFC 9449 §8) is normal traffic; the rest is a client bug or an attack.
    const level = reason === 'nonce' || reason === 'nonce_missing' ? 'info' : 'warn';
    deps.logger[level]({ reqId: ctx.id, route: ctx.route?.name, reason }, 'dpop proof refused');
  };
  const stages = pipelineOf({
    hygiene: createHygieneStage({
      trust,
      maxBodyBytes: frozen.server.limits.maxBodyBytes,
      authorities: compileAuthorities(frozen.server.publicOrigins, frozen.routes.flatMap((r) => (r.hosts ?? []).filter((h) => h !== '*'))),
      headersWithUnderscores: frozen.server.headersWithUnderscores,
    }),
    route: createRouteStage(routes),
    authn: createAuthnStage({
      issuers: new Map(issuers.map((i) => [i.issuer, i])),
      cache: createTokenCache(frozen.identity.tokenCache),
      dpopAlgorithms: dpop.algorithms,
      now,
    }),
    device: createDeviceStage({
      dpop: createDpopVerifier({
        algorithms: [...dpop.algorithms],
        maxAgeS: dpop.maxAgeS,
        futureSkewS: dpop.futureSkewS,
        replay: deps.services.replayCache,
        nonce: dpop.nonce && { secret: new TextEncoder().encode(dpop.nonce.secret), windowS: dpop.nonce.windowS },
        now,
      }),
      registry: deps.services.registry,
      fingerprints: deps.services.fingerprints,
      staleAfterS: frozen.devices.staleAfterS,
      soleIssuer: frozen.identity.issuers.length === 1 ? frozen.identity.issuers[0]!.issuer : undefined,
      dpopAlgorithms: dpop.algorithms,
      onDpopFailure,
      now,
    }),
    authz:
      deps.services.policies === undefined
        ? undefined
        : createAuthzStage({
            policies: deps.services.policies,
            upstreams: frozen.upstreams,
            decisionLog: deps.decisionLog,
            allowSampleRate: frozen.policies?.decisionLog.allowSampleRate ?? 0,
            recordLimits: compileRecordLimits(frozen.policies?.decisionLog.headers),
            lineBudget: frozen.policies && createLineBudget({
              perSecond: frozen.policies.decisionLog.perPrincipalPerSecond,
              burst: frozen.policies.decisionLog.perPrincipalBurst,
              maxKeys: 10_000,
            }),
            onSuppressed: () => deps.metrics.decisionLinesSuppressed.inc(),
            onDecision: (decision) => {
              deps.metrics.policyDecisions.inc(decision.effect);
              for (const e of decision.errors) deps.metrics.policyRuleErrors.inc(e.policy, e.rule);
            },
            now,
          }),
    assertion: createAssertionStage(assertions, now),
  });
  return Object.freeze({
    config: frozen,
    version,
    routes: Object.freeze(routes),
    issuers: Object.freeze(issuers),
    stages,
    trust,
    forwarding: compileForwardingPolicy(frozen.assertion.header),
    assertions,
  });
}
