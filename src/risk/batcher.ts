// Micro-batching for the risk model: one ONNX run costs about the same for 1 row as for 64
// (measured, models/README.md), so concurrent requests share a run. A request's row is copied
// into the open batch at once (the caller may reuse its buffer); the batch is run when it is
// full, or at setImmediate, i.e. once the event loop has read every request that arrived in
// the same I/O poll. setTimeout cannot express "a few hundred microseconds": its floor is
// 1 ms, the whole latency budget. While one run is in flight the next batch keeps filling, so
// under load batches grow by themselves and the added latency stays one run or two.
import { FEATURE_COUNT } from './features.ts';
import { RiskModelError, topFeatureIndexes, type RiskModel } from './model.ts';

export interface RiskScore {
  readonly score: number;
  /** Feature indexes (FEATURE_NAMES) of the largest contributions, largest first. */
  readonly top: readonly number[];
}

export interface Batcher {
  /** Scores one row of FEATURE_COUNT floats (read from `offset`). Rejects with RiskModelError on inference failure. */
  score(features: Float32Array, offset?: number): Promise<RiskScore>;
  /** Waits for the runs in flight; later calls reject. */
  close(): Promise<void>;
  /** Rows per run, for the metrics: runs and rows scored so far. */
  readonly stats: { runs: number; rows: number };
}

export interface BatcherOptions {
  /** Rows per run at most (64 by default). */
  maxRows?: number;
  /** Top features per score (3 by default). */
  topK?: number;
  /** When to run an open batch: setImmediate by default (tests may inject). */
  schedule?: (run: () => void) => void;
  /** Called with the rows of each run as it starts (the gateway's batch-size histogram). */
  onRun?: (rows: number) => void;
}

interface Batch {
  rows: number;
  data: Float32Array;
  waiters: { resolve: (s: RiskScore) => void; reject: (e: unknown) => void }[];
}

export function createBatcher(model: Pick<RiskModel, 'score'>, opts: BatcherOptions = {}): Batcher {
  const maxRows = opts.maxRows ?? 64;
  const topK = opts.topK ?? 3;
  const schedule = opts.schedule ?? ((fn: () => void) => void setImmediate(fn));
  const ready: Batch[] = []; // full or due, waiting for the run in flight
  let open: Batch | undefined;
  let scheduled = false;
  let running: Promise<void> | undefined;
  let closed = false;
  const stats = { runs: 0, rows: 0 };
  const spare: Float32Array[] = [];

  function newBatch(): Batch {
    return { rows: 0, data: spare.pop() ?? new Float32Array(maxRows * FEATURE_COUNT), waiters: [] };
  }

  function seal(): void {
    if (open !== undefined && open.rows > 0) ready.push(open);
    open = undefined;
    if (running === undefined) pump();
  }

  function pump(): void {
    const batch = ready.shift();
    if (batch === undefined) return;
    running = run(batch).finally(() => {
      running = undefined;
      pump();
    });
  }

  async function run(batch: Batch): Promise<void> {
    stats.runs++;
    stats.rows += batch.rows;
    opts.onRun?.(batch.rows);
    try {
      const { scores, contributions } = await model.score(batch.data, batch.rows);
      for (let r = 0; r < batch.rows; r++) batch.waiters[r]!.resolve({ score: scores[r]!, top: topFeatureIndexes(contributions, r, topK) });
    } catch (err) {
      const e = err instanceof RiskModelError ? err : new RiskModelError('inference', 'the risk model failed to score a batch', { cause: err });
      for (const w of batch.waiters) w.reject(e);
    } finally {
      spare.push(batch.data);
    }
  }

  return {
    stats,
    score(features, offset = 0) {
      if (closed) return Promise.reject(new RiskModelError('inference', 'the risk batcher is closed'));
      open ??= newBatch();
      const batch = open;
      batch.data.set(features.subarray(offset, offset + FEATURE_COUNT), batch.rows * FEATURE_COUNT);
      batch.rows++;
      const result = new Promise<RiskScore>((resolve, reject) => batch.waiters.push({ resolve, reject }));
      if (batch.rows === maxRows) seal();
      else if (!scheduled) {
        scheduled = true;
        schedule(() => {
          scheduled = false;
          seal();
        });
      }
      return result;
    },
    async close() {
      closed = true;
      seal();
      while (running !== undefined || ready.length > 0) await running;
    },
  };
}
