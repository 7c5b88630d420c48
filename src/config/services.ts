// Long-lived resources a gateway process owns across config reloads: the Redis connection,
// the device registry, the DPoP replay cache, the rate-limit store and its counters, the
// per-process assertion key. A reload builds
// a new Runtime over the same services; changing them (e.g. redis.url) needs a restart
// (config/reload.ts restartRequired). The policy set is not one of them: it is part of the
// Runtime, compiled and swapped with the config it refers to.
import { resolve } from 'node:path';
import { Cluster, Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from './schema.ts';
import { generateSigningKey, type SigningKey } from '../identity/assertion.ts';
import type { DeviceRegistry } from '../identity/devices/registry.ts';
import { createFileRegistry } from '../identity/devices/file-store.ts';
import { createRedisRegistry } from '../identity/devices/redis-store.ts';
import { createMemoryReplayCache, createRedisReplayCache, type ReplayCache } from '../identity/replay-cache.ts';
import { createFingerprintTracker, type FingerprintTracker } from '../identity/fingerprint.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { createMemoryStore } from '../limits/memory-store.ts';
import { createRedisStore, rateLimitRedisOptions } from '../limits/redis-store.ts';
import { createResilientStore, type StoreState } from '../limits/resilient.ts';
import type { RateLimitStore } from '../limits/store.ts';
import { createFeatureExtractor, type FeatureExtractor } from '../risk/features.ts';

export interface Services {
  readonly redis: Redis | undefined;
  readonly registry: DeviceRegistry;
  readonly replayCache: ReplayCache;
  readonly fingerprints: FingerprintTracker | undefined;
  /** Rate-limit counters: in memory, or Redis (Cluster) behind a deadline and the tiers' failure modes. */
  readonly rateLimits: RateLimitService;
  /** Signs assertions when no keys are configured (single instance, demo). */
  readonly ephemeralKey: SigningKey;
  /**
   * The risk model's per-principal histories. They outlive every reload and model swap: a new
   * Runtime (or model) scores from the same history, not from a blank one every attacker
   * would enjoy after each config push. Sized once (risk.maxPrincipals, restart-only).
   */
  readonly riskFeatures: FeatureExtractor;
  close(): Promise<void>;
}

export interface RateLimitService {
  readonly store: RateLimitStore;
  readonly kind: 'memory' | 'redis' | 'redis-cluster';
  /** 'failing' while the shared store does not answer (always 'ok' in memory). */
  state(): StoreState;
  close(): Promise<void>;
}

/** Where limit counters live: limits.store, else Redis when one is configured, else memory. */
export function rateLimitStoreKind(config: Config): 'memory' | 'redis' {
  return config.limits.store ?? (config.limits.redis !== undefined || config.redis !== undefined ? 'redis' : 'memory');
}

const STORE_READY_WAIT_MS = 3000;

/** True once the client is ready, false after `ms` (ioredis keeps reconnecting by itself). */
function readyWithin(client: Redis | Cluster, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(false), ms);
    const onReady = (): void => done(true);
    function done(ready: boolean): void {
      clearTimeout(timer);
      client.off('ready', onReady);
      resolve(ready);
    }
    client.on('ready', onReady);
  });
}

/**
 * The rate-limit store. Its Redis connection is its own, not the registry's: it must never
 * queue a command (rateLimitRedisOptions), while the registry's may wait its commandTimeout.
 */
async function createRateLimits(config: Config, logger: Logger, metrics: GatewayMetrics): Promise<RateLimitService> {
  const limits = config.limits;
  if (rateLimitStoreKind(config) === 'memory') {
    metrics.rateLimitStoreUp.set(1);
    const store = createMemoryStore({ maxEntries: limits.maxLocalKeys });
    return { store, kind: 'memory', state: () => 'ok', close: () => store.close() };
  }
  const seeds = limits.redis?.cluster;
  let client: Redis | Cluster;
  if (seeds !== undefined) {
    // Cluster takes neither retryStrategy nor enableOfflineQueue per node (it has its own).
    const { retryStrategy: _retry, enableOfflineQueue: _queue, ...redisOptions } = rateLimitRedisOptions;
    client = new Cluster(
      seeds.map((url) => {
        const u = new URL(url);
        return { host: u.hostname, port: Number(u.port || 6379) };
      }),
      { enableAutoPipelining: true, enableOfflineQueue: false, redisOptions, clusterRetryStrategy: (times) => Math.min(100 * times, 2000) },
    );
  } else {
    client = new Redis(limits.redis?.url ?? config.redis!.url, rateLimitRedisOptions);
  }
  // Without a listener ioredis prints every connection error to stderr; the store's own
  // state change is the log line (once per change), this the per-error count.
  client.on('error', () => metrics.dependencyErrors.inc({ dependency: 'rate-limit-store' }));
  metrics.rateLimitStoreUp.set(1);
  // Commands are never queued (rateLimitRedisOptions), so until the client is ready every
  // check would take its failure mode: give it a moment at start (a Cluster first learns its
  // slots), then go on either way.
  if (client.status !== 'ready' && !(await readyWithin(client, STORE_READY_WAIT_MS))) {
    logger.warn({ waitedMs: STORE_READY_WAIT_MS }, 'rate-limit store not reachable at start: each tier applies its onStoreFailure until it is');
  }
  const store = createResilientStore({
    primary: createRedisStore({ redis: client }),
    timeoutMs: limits.timeoutMs,
    expectedInstances: limits.expectedInstances,
    localMaxEntries: limits.maxLocalKeys,
    onStateChange: (state, err) => {
      metrics.rateLimitStoreUp.set(state === 'ok' ? 1 : 0);
      if (state === 'failing') {
        logger.error({ err: err?.message, reason: err?.reason }, 'rate-limit store failing: each tier applies its onStoreFailure (allow, deny or local)');
      } else {
        logger.info('rate-limit store answering again: limits shared across instances');
      }
    },
  });
  return {
    store,
    kind: seeds === undefined ? 'redis' : 'redis-cluster',
    state: () => store.state(),
    async close() {
      await store.close();
      client.disconnect();
    },
  };
}

function connectRedis(config: NonNullable<Config['redis']>, logger: Logger, metrics: GatewayMetrics): Redis {
  const redis = new Redis(config.url, {
    // Fail fast instead of queueing: a request waiting on a dead Redis is a request that
    // should get its declared failure mode now (the stages fail closed with 503).
    commandTimeout: config.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 2000,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
    lazyConnect: false,
  });
  let healthy = true;
  redis.on('error', (err) => {
    metrics.dependencyErrors.inc({ dependency: 'redis' });
    if (healthy) logger.error({ err: err.message }, 'redis unavailable; requests that need it are refused (fail closed)');
    healthy = false;
  });
  redis.on('ready', () => {
    if (!healthy) logger.info('redis reachable again');
    healthy = true;
  });
  redis.once('ready', () => void warnIfEvicting(redis, logger));
  return redis;
}

/**
 * DPoP jtis are keys with a TTL. Under an evicting maxmemory-policy (allkeys-*, and
 * volatile-* which picks exactly such keys) a full Redis forgets live jtis, the replay
 * CVE-2026-41707 is about; under noeviction it refuses the SET and requests fail closed.
 * Managed Redis often forbids CONFIG: then nothing is said.
 */
async function warnIfEvicting(redis: Redis, logger: Logger): Promise<void> {
  try {
    const reply = (await redis.call('CONFIG', 'GET', 'maxmemory-policy')) as string[];
    const policy = reply?.[1];
    if (policy !== undefined && policy !== 'noeviction') {
      logger.warn(
        { maxmemoryPolicy: policy },
        'redis maxmemory-policy evicts keys: when Redis is full it can forget live DPoP jtis (replayable proofs); set maxmemory-policy noeviction for the replay cache',
      );
    }
  } catch {
    // CONFIG disabled or renamed: the operator has to check the policy themselves.
  }
}

/** The registry the config names; the CLI opens it on its own, the gateway through createServices. */
export async function openRegistry(
  config: Config,
  configDir: string,
  redis?: Redis,
  hooks: { onError?: (err: unknown) => void; onReload?: () => void; watch?: boolean } = {},
): Promise<DeviceRegistry> {
  const registryConfig = config.devices.registry;
  if (!('redis' in registryConfig)) {
    return createFileRegistry({ file: resolve(configDir, registryConfig.file), watch: hooks.watch ?? false, ...hooks });
  }
  const own = redis === undefined;
  const client = redis ?? new Redis(config.redis!.url, { maxRetriesPerRequest: 1, connectTimeout: 2000 });
  const registry = createRedisRegistry({ redis: client, cacheTtlMs: config.devices.cacheTtlMs, onError: hooks.onError });
  if (!own) return registry;
  // Opened for the CLI: closing the registry closes the connection it made.
  return { ...registry, close: async () => (await registry.close(), client.disconnect()) };
}

/**
 * A full in-memory replay cache refuses new proofs rather than forget a live jti
 * (CVE-2026-41707): a metric for every refusal, and a log line at the 1st, 10th, 100th…
 * of each reason, so a sustained flood is visible without a line per request.
 */
function replayRefusalReporter(
  limits: { maxEntries: number; perKey: number },
  logger: Logger,
  metrics: GatewayMetrics,
): (info: { reason: 'full' | 'partition_full'; size: number; partition: string }) => void {
  const counts = { full: 0, partition_full: 0 };
  const nextLogAt = { full: 1, partition_full: 1 };
  return ({ reason, size, partition }) => {
    metrics.replayRefusals.inc({ reason: reason === 'full' ? 'cache_full' : 'key_full' });
    if (++counts[reason] < nextLogAt[reason]) return;
    nextLogAt[reason] *= 10;
    if (reason === 'full') {
      logger.warn(
        { refused: counts.full, size, maxEntries: limits.maxEntries },
        'DPoP replay cache full of live jtis: new proofs refused (503) until some expire; raise identity.dpop.replayCacheMaxEntries or use Redis',
      );
    } else {
      logger.warn(
        { refused: counts.partition_full, perKey: limits.perKey, jkt: partition },
        'DPoP replay cache: a key holds its whole share of live jtis (identity.dpop.replayCacheKeyShare); its new proofs are refused (503), other keys unaffected',
      );
    }
  };
}

/** Live jtis one DPoP key may hold in the memory cache: its share, at least one. */
function replayCacheLimits(dpop: Config['identity']['dpop']): { maxEntries: number; perKey: number } {
  return { maxEntries: dpop.replayCacheMaxEntries, perKey: Math.max(1, Math.floor(dpop.replayCacheMaxEntries * dpop.replayCacheKeyShare)) };
}

export async function createServices(config: Config, configDir: string, logger: Logger, metrics: GatewayMetrics): Promise<Services> {
  const redis = config.redis === undefined ? undefined : connectRedis(config.redis, logger, metrics);
  const registry = await openRegistry(config, configDir, redis, {
    watch: true,
    onError: (err: unknown) => {
      metrics.dependencyErrors.inc({ dependency: 'device-registry' });
      logger.error({ err: (err as Error).message ?? String(err) }, 'device registry error (a broken file keeps its last good content)');
    },
    onReload: () => logger.info('device file reloaded'),
  });
  const rateLimits = await createRateLimits(config, logger, metrics);
  const replayLimits = replayCacheLimits(config.identity.dpop);
  const replayCache =
    redis === undefined
      ? createMemoryReplayCache({
          maxEntries: replayLimits.maxEntries,
          maxEntriesPerPartition: replayLimits.perKey,
          onRefused: replayRefusalReporter(replayLimits, logger, metrics),
        })
      : createRedisReplayCache({ redis, prefix: 'ztgw:dpop:jti:', timeoutMs: config.redis!.commandTimeoutMs });
  return {
    redis,
    registry,
    replayCache,
    fingerprints: config.devices.fingerprint ? createFingerprintTracker({ maxDevices: 100_000 }) : undefined,
    rateLimits,
    ephemeralKey: await generateSigningKey(),
    riskFeatures: createFeatureExtractor({ maxPrincipals: config.risk?.maxPrincipals ?? 20_000 }),
    async close() {
      await rateLimits.close();
      await registry.close();
      await replayCache.close?.();
      redis?.disconnect();
    },
  };
}
