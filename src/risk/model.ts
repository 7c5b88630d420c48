// The anomaly model: one onnxruntime-node session over models/anomaly.onnx, checked against
// its metadata and against this build's feature extractor before anything is scored. A model
// whose metadata names another feature spec would read every column wrong and still return
// plausible scores, so a mismatch is refused at load, never discovered in production.
import { readFile } from 'node:fs/promises';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { FEATURE_COUNT, FEATURE_NAMES, FEATURE_SPEC_HASH } from './features.ts';

export type RiskModelFailure = 'missing' | 'corrupt' | 'metadata' | 'spec-mismatch' | 'inference';

/** The model cannot be loaded or run; `reason` says which, `cause` keeps the library's error for logs. */
export class RiskModelError extends Error {
  static readonly code = 'ERR_RISK_MODEL';
  readonly code = RiskModelError.code;
  readonly reason: RiskModelFailure;

  constructor(reason: RiskModelFailure, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RiskModelError';
    this.reason = reason;
  }
}

/** The part of anomaly.meta.json the gateway relies on (the file holds more: figures, training). */
export interface RiskModelMeta {
  readonly modelVersion: string;
  readonly featureSpecHash: string;
  readonly features: readonly string[];
  readonly thresholds: { readonly flag: number; readonly strict?: number };
  readonly [key: string]: unknown;
}

export interface ScoreResult {
  /** One score in [0, 1] per row. */
  readonly scores: Float32Array;
  /** Row-major [rows, FEATURE_COUNT]: each row's share of the score per feature (sums to ~1). */
  readonly contributions: Float32Array;
}

export interface RiskModel {
  readonly meta: RiskModelMeta;
  readonly version: string;
  /** Scores `rows` rows of FEATURE_COUNT floats each, read from the start of `batch`. Rejects with RiskModelError('inference'). */
  score(batch: Float32Array, rows: number): Promise<ScoreResult>;
  close(): Promise<void>;
}

export interface LoadRiskModelOptions {
  modelPath: string;
  metaPath: string;
  /** Threads for one run. 1 by default: the gateway's event loop and other work share the cores. */
  intraOpThreads?: number;
}

export async function loadRiskModel(opts: LoadRiskModelOptions): Promise<RiskModel> {
  const meta = parseMeta(await read(opts.metaPath, 'utf8'), opts.metaPath);
  const bytes = await read(opts.modelPath);
  let session: InferenceSession;
  try {
    session = await InferenceSession.create(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), {
      intraOpNumThreads: opts.intraOpThreads ?? 1,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    });
  } catch (cause) {
    throw new RiskModelError('corrupt', `${opts.modelPath}: not a loadable ONNX model`, { cause });
  }
  const model = fromSession(session, meta, opts.modelPath);
  // A probe row proves the graph has the shape the metadata promises before we serve with it.
  try {
    const probe = await model.score(new Float32Array(FEATURE_COUNT), 1);
    const s = probe.scores[0]!;
    if (!(s >= 0 && s <= 1) || probe.contributions.length !== FEATURE_COUNT) throw new Error(`probe returned score ${s}, ${probe.contributions.length} contributions`);
  } catch (cause) {
    await session.release();
    throw new RiskModelError('corrupt', `${opts.modelPath}: the graph does not take [N, ${FEATURE_COUNT}] features to a score and contributions`, { cause });
  }
  return model;
}

function fromSession(session: InferenceSession, meta: RiskModelMeta, path: string): RiskModel {
  const missing = ['features'].filter((n) => !session.inputNames.includes(n)).concat(['score', 'contributions'].filter((n) => !session.outputNames.includes(n)));
  if (missing.length > 0) throw new RiskModelError('corrupt', `${path}: graph lacks ${missing.join(', ')} (inputs ${session.inputNames}, outputs ${session.outputNames})`);
  return {
    meta,
    version: meta.modelVersion,
    async score(batch, rows) {
      const n = rows * FEATURE_COUNT;
      const data = batch.length === n ? batch : batch.subarray(0, n);
      try {
        const out = await session.run({ features: new Tensor('float32', data, [rows, FEATURE_COUNT]) });
        return { scores: out.score!.data as Float32Array, contributions: out.contributions!.data as Float32Array };
      } catch (cause) {
        throw new RiskModelError('inference', 'the risk model failed to score a batch', { cause });
      }
    },
    close: () => session.release(),
  };
}

/** The indexes of the k largest contributions of one row, largest first. */
export function topFeatureIndexes(contributions: Float32Array, row: number, k: number): number[] {
  const base = row * FEATURE_COUNT;
  const top: number[] = [];
  for (let f = 0; f < FEATURE_COUNT; f++) {
    const v = contributions[base + f]!;
    let at = top.length;
    while (at > 0 && contributions[base + top[at - 1]!]! < v) at--;
    if (at < k) {
      top.splice(at, 0, f);
      if (top.length > k) top.pop();
    }
  }
  return top;
}

export function topFeatureNames(contributions: Float32Array, row: number, k: number): string[] {
  return topFeatureIndexes(contributions, row, k).map((i) => FEATURE_NAMES[i]!);
}

async function read(path: string): Promise<Buffer>;
async function read(path: string, encoding: 'utf8'): Promise<string>;
async function read(path: string, encoding?: 'utf8'): Promise<Buffer | string> {
  try {
    return encoding === undefined ? await readFile(path) : await readFile(path, encoding);
  } catch (cause) {
    const reason = (cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'corrupt';
    throw new RiskModelError(reason, `${path}: ${reason === 'missing' ? 'no such file' : 'cannot be read'}`, { cause });
  }
}

export function parseMeta(text: string, path = 'metadata'): RiskModelMeta {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new RiskModelError('metadata', `${path}: not JSON`, { cause });
  }
  const m = raw as Record<string, unknown>;
  const th = m?.thresholds as Record<string, unknown> | undefined;
  if (
    typeof m !== 'object' ||
    m === null ||
    typeof m.modelVersion !== 'string' ||
    typeof m.featureSpecHash !== 'string' ||
    !Array.isArray(m.features) ||
    typeof th !== 'object' ||
    th === null ||
    typeof th.flag !== 'number' ||
    !(th.flag > 0 && th.flag < 1)
  ) {
    throw new RiskModelError('metadata', `${path}: needs modelVersion, featureSpecHash, features[] and thresholds.flag in (0, 1)`);
  }
  if (m.featureSpecHash !== FEATURE_SPEC_HASH) {
    throw new RiskModelError('spec-mismatch', `${path}: model was trained on feature spec ${m.featureSpecHash}, this gateway extracts ${FEATURE_SPEC_HASH}; retrain (npm run model:train) or deploy the matching gateway`);
  }
  const names = m.features as unknown[];
  const differs = names.length !== FEATURE_COUNT || names.some((n, i) => n !== FEATURE_NAMES[i]);
  if (differs) throw new RiskModelError('spec-mismatch', `${path}: feature names or order differ from this gateway's extractor`);
  return m as unknown as RiskModelMeta;
}
