// Request traces (the `ztgw model score|eval` input contract, shared/ARCHITECTURE.md) and their
// replay through the gateway's own extractor and model: the one place that says what a trace
// line is and in which order it is replayed, for the CLI, the training scripts and the tests.
// Reading is strict per line: a bad line is reported with its number and the trace is refused
// (a score file with silently missing lines would misalign with its input).
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { createFeatureExtractor, FEATURE_COUNT, replayLine, type TraceEvent } from './features.ts';
import type { RiskModel } from './model.ts';

/** A trace line as read: the contract's fields, plus the optional evaluation label and generator context. */
export interface TraceLine extends TraceEvent {
  /** "benign" or an attack family (eval input). */
  readonly label?: string;
  /** models/train/generate.ts marks a victim's own benign lines after an episode "after-attack". */
  readonly context?: string;
}

export interface TraceIssue {
  /** 1-based line number in the file. */
  readonly line: number;
  readonly message: string;
}

/** A trace that does not read: every bad line, by number. */
export class TraceError extends Error {
  readonly issues: readonly TraceIssue[];
  constructor(file: string, issues: readonly TraceIssue[]) {
    super(issues.map((i) => `${file}:${i.line}: ${i.message}`).join('\n'));
    this.name = 'TraceError';
    this.issues = issues;
  }
}

const STRING_FIELDS = ['principal', 'device', 'ip', 'method', 'path'] as const;
const NUMBER_FIELDS = ['ts', 'status', 'bytes'] as const;

/** One JSONL line → a trace line, or the reason it is not one. Extra fields are ignored. */
export function parseTraceLine(text: string, opts: { label?: boolean } = {}): TraceLine | string {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return 'not a JSON object';
  const o = raw as Record<string, unknown>;
  for (const f of NUMBER_FIELDS) if (typeof o[f] !== 'number' || !Number.isFinite(o[f])) return `"${f}" must be a number`;
  for (const f of STRING_FIELDS) if (typeof o[f] !== 'string') return `"${f}" must be a string`;
  if (opts.label === true && typeof o.label !== 'string') return '"label" must be a string ("benign" or an attack family)';
  return {
    ts: o.ts as number,
    principal: o.principal as string,
    device: o.device as string,
    ip: o.ip as string,
    method: o.method as string,
    path: o.path as string,
    status: o.status as number,
    bytes: o.bytes as number,
    ...(typeof o.denied === 'boolean' && { denied: o.denied }),
    ...(typeof o.authFailure === 'boolean' && { authFailure: o.authFailure }),
    ...(typeof o.claimedPrincipal === 'string' && { claimedPrincipal: o.claimedPrincipal }),
    ...(typeof o.fingerprintChanged === 'boolean' && { fingerprintChanged: o.fingerprintChanged }),
    ...(o.refusedOnRisk === true && { refusedOnRisk: true }),
    ...(typeof o.label === 'string' && { label: o.label }),
    ...(typeof o.context === 'string' && { context: o.context }),
  };
}

/** Reads a JSONL trace; blank lines are skipped. Throws TraceError listing every bad line (at most `maxIssues`). */
export async function readTraceFile(file: string, opts: { label?: boolean; maxIssues?: number } = {}): Promise<TraceLine[]> {
  const lines: TraceLine[] = [];
  const issues: TraceIssue[] = [];
  const maxIssues = opts.maxIssues ?? 20;
  const rl = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
  let n = 0;
  for await (const text of rl) {
    n++;
    if (text.trim() === '') continue;
    const parsed = parseTraceLine(text, opts);
    if (typeof parsed === 'string') {
      if (issues.length < maxIssues) issues.push({ line: n, message: parsed });
    } else lines.push(parsed);
  }
  if (issues.length > 0) throw new TraceError(file, issues);
  return lines;
}

/** Input line order of a trace sorted by event time (stable: ties keep input order). */
export function eventOrder(lines: readonly { ts: number }[]): Uint32Array {
  const idx = Uint32Array.from(lines.keys());
  return idx.sort((a, b) => lines[a]!.ts - lines[b]!.ts || a - b);
}

/**
 * Every line's features, in input order, replayed in event-time order through a fresh
 * extractor exactly as the gateway feeds it (replayLine: request, row taken, response).
 */
export function featurizeTrace(lines: readonly TraceEvent[], opts: { maxPrincipals?: number } = {}): Float32Array {
  const X = new Float32Array(lines.length * FEATURE_COUNT);
  const extractor = createFeatureExtractor({ maxPrincipals: opts.maxPrincipals ?? 100_000 });
  for (const i of eventOrder(lines)) replayLine(extractor, lines[i]!, (row) => X.set(row, i * FEATURE_COUNT));
  return X;
}

/** Scores rows of features in chunks (one ONNX run costs about the same for 1 or 4,096 rows). */
export async function scoreRows(model: Pick<RiskModel, 'score'>, X: Float32Array, n: number, chunk = 4096): Promise<Float32Array> {
  const out = new Float32Array(n);
  for (let r = 0; r < n; r += chunk) {
    const rows = Math.min(chunk, n - r);
    const { scores } = await model.score(X.subarray(r * FEATURE_COUNT, (r + rows) * FEATURE_COUNT), rows);
    out.set(scores.subarray(0, rows), r);
  }
  return out;
}

/** The score of every line, in input order. */
export async function scoreTrace(model: Pick<RiskModel, 'score'>, lines: readonly TraceEvent[], opts: { maxPrincipals?: number } = {}): Promise<Float32Array> {
  return scoreRows(model, featurizeTrace(lines, opts), lines.length);
}
