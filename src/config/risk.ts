// The risk section compiled: the anomaly model and its batcher, as a Runtime part keyed by the
// model's path and content, beside the process-lifetime feature extractor (config/services.ts).
// A reload that leaves path and bytes alone reuses the loaded model; one that changes them
// loads and checks the new model aside (loadRiskModel probes it) and the Runtime swap makes it
// current at once for new requests. A new model that does not load never replaces a working
// one: the reload goes on with the running model and the refusal is logged, counted and shown
// on /readyz (Runtime.risk.error).
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { ConfigError } from '../core/diagnostics.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import { createBatcher, type Batcher } from '../risk/batcher.ts';
import type { FeatureExtractor } from '../risk/features.ts';
import { loadRiskModel, RiskModelError, type RiskModel } from '../risk/model.ts';
import type { Config } from './schema.ts';

/** A loaded model and the batcher in front of it, under the key of what it was loaded from. */
export interface LoadedRiskModel {
  /** Paths, content hash and batch size. */
  readonly key: string;
  readonly model: RiskModel;
  readonly batcher: Batcher;
  readonly modelPath: string;
  /** sha256 of the model and metadata bytes (first 12 hex digits). */
  readonly contentHash: string;
  /** Waits for the runs in flight, then frees the session. */
  close(): Promise<void>;
}

export interface RuntimeRisk {
  /** The per-principal histories: one object for the life of the process, whatever reloads. */
  readonly extractor: FeatureExtractor;
  /** undefined in degraded mode: requests are observed, not scored. */
  readonly loaded: LoadedRiskModel | undefined;
  /** risk.threshold, else the model's thresholds.flag. */
  readonly threshold: number;
  /** Why the configured model is not the one scoring (degraded, or a refused new model); undefined when it is. */
  readonly error: string | undefined;
}

export interface RiskCompileDeps {
  readonly configDir: string;
  readonly extractor: FeatureExtractor;
  readonly previous: RuntimeRisk | undefined;
  readonly logger: Logger;
  readonly metrics: Pick<GatewayMetrics, 'riskBatchRows' | 'riskModelUp' | 'riskModelLoads'>;
}

export function riskPaths(risk: NonNullable<Config['risk']>, configDir: string): { modelPath: string; metaPath: string } {
  const modelPath = resolve(configDir, risk.model);
  const metaPath = risk.meta === undefined ? `${modelPath.replace(/\.onnx$/, '')}.meta.json` : resolve(configDir, risk.meta);
  return { modelPath, metaPath };
}

async function contentHash(modelPath: string, metaPath: string): Promise<string> {
  const h = createHash('sha256');
  for (const path of [modelPath, metaPath]) {
    try {
      h.update(await readFile(path));
    } catch (cause) {
      const missing = (cause as NodeJS.ErrnoException).code === 'ENOENT';
      throw new RiskModelError(missing ? 'missing' : 'corrupt', `${path}: ${missing ? 'no such file' : 'cannot be read'}`, { cause });
    }
    h.update('\u0000');
  }
  return h.digest('hex').slice(0, 12);
}

async function load(risk: NonNullable<Config['risk']>, deps: RiskCompileDeps): Promise<LoadedRiskModel> {
  const { modelPath, metaPath } = riskPaths(risk, deps.configDir);
  const hash = await contentHash(modelPath, metaPath);
  const key = `${modelPath}\u0000${metaPath}\u0000${hash}\u0000${risk.maxBatch}`;
  const running = deps.previous?.loaded;
  if (running?.key === key) return running;
  const model = await loadRiskModel({ modelPath, metaPath });
  const batcher = createBatcher(model, { maxRows: risk.maxBatch, onRun: (rows) => deps.metrics.riskBatchRows.observe(rows) });
  return {
    key,
    model,
    batcher,
    modelPath,
    contentHash: hash,
    async close() {
      await batcher.close();
      await model.close();
    },
  };
}

/** The reason, with the library's own words unless the file is simply missing. */
const describe = (err: RiskModelError): string =>
  err.reason !== 'missing' && err.cause instanceof Error ? `${err.message} (${err.cause.message})` : err.message;

/**
 * The risk part of a Runtime; undefined without a risk section (or enabled: false). Throws
 * ConfigError only when there is no working model to keep and risk.onModelError is fail: at
 * start that stops the gateway (exit 2), on a reload it refuses the reload.
 */
export async function compileRisk(config: Config, deps: RiskCompileDeps): Promise<RuntimeRisk | undefined> {
  const risk = config.risk;
  if (risk === undefined || !risk.enabled) {
    deps.metrics.riskModelUp.set(0);
    return undefined;
  }
  const running = deps.previous?.loaded;
  try {
    const loaded = await load(risk, deps);
    if (loaded !== running) {
      deps.metrics.riskModelLoads.inc({ result: 'ok' });
      deps.logger.info(
        { modelVersion: loaded.model.version, model: loaded.modelPath, contentHash: loaded.contentHash, replacing: running?.model.version },
        running === undefined ? 'risk model loaded' : 'risk model replaced',
      );
    }
    deps.metrics.riskModelUp.set(1);
    return Object.freeze({ extractor: deps.extractor, loaded, threshold: risk.threshold ?? loaded.model.meta.thresholds.flag, error: undefined });
  } catch (err) {
    if (!(err instanceof RiskModelError)) throw err;
    deps.metrics.riskModelLoads.inc({ result: 'failed' });
    const reason = describe(err);
    if (running !== undefined) {
      deps.logger.error({ err: reason, keeping: running.model.version }, 'risk model reload refused: the new model does not load; keeping the running one');
      return Object.freeze({ ...deps.previous!, error: `new model refused (keeping ${running.model.version}): ${reason}` });
    }
    if (risk.onModelError === 'fail') {
      const { modelPath } = riskPaths(risk, deps.configDir);
      throw new ConfigError([{ file: modelPath, line: 1, col: 1, field: 'risk.model', message: `${reason} (risk.onModelError: fail; degraded starts without scores)` }], { cause: err });
    }
    deps.metrics.riskModelUp.set(0);
    deps.logger.error(
      { err: reason },
      'RISK MODEL NOT LOADED: running degraded (risk.onModelError: degraded): no request is scored, risk is empty and policies reading it fail closed',
    );
    return Object.freeze({ extractor: deps.extractor, loaded: undefined, threshold: risk.threshold ?? 1, error: `degraded, no model: ${reason}` });
  }
}
