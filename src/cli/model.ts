// `ztgw model score|eval`: the anomaly model on traces, outside the gateway, through the very
// extractor and model code the gateway runs (src/risk/trace.ts), so anyone can judge the model
// on traffic it was not trained on and reproduce a score the gateway computed.
// Exit codes follow ztgw: 0 ok, 1 runtime failure (inference), 2 bad input (usage, a trace
// line that does not read — reported by line number —, a model or metadata that does not load).
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { evaluate, formatFigures, rateZ, type Scored } from '../risk/evaluation.ts';
import { loadRiskModel, RiskModelError, type RiskModel } from '../risk/model.ts';
import { readTraceFile, scoreTrace, TraceError } from '../risk/trace.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
const DEFAULT_MODEL = resolve(REPO_ROOT, 'models/anomaly.onnx');
/** The gateway's default risk.maxPrincipals: the same LRU bound, the same evictions. */
const DEFAULT_MAX_PRINCIPALS = 20_000;

export const MODEL_USAGE = `usage: ztgw model <command> [options]

  score --traces IN.jsonl --out OUT.jsonl [--model FILE] [--meta FILE] [--max-principals N]
        replay a request trace through the gateway's feature extractor and model, in event-time
        order (equal timestamps keep input order), and write one line {"ts","principal","score"}
        per input line, in input order (--out - writes to stdout)
  eval --traces labelled.jsonl [--model FILE] [--meta FILE] [--max-principals N] [--json]
        score a labelled trace and print per attack family: ROC-AUC, TPR at 1 % and 0.1 % FPR
        (thresholds from the trace's benign lines), TPR at the model's flag threshold, and the
        same figures for a per-principal request-rate z-score baseline

  Trace lines: {"ts": epoch-ms, "principal", "device", "ip", "method", "path", "status", "bytes"}
  (+ "label": "benign" or a family name, for eval); authFailure, denied, fingerprintChanged and
  refusedOnRisk are read when true, claimedPrincipal (a refused token's subject) when a string,
  other fields ignored. A line that does not read is reported
  with its line number (exit 2) and nothing is written.
  --model FILE        default models/anomaly.onnx of this checkout
  --meta FILE         default: the model's name with .meta.json for .onnx
  --max-principals N  principals the extractor keeps (LRU), as the gateway's risk.maxPrincipals;
                      default ${DEFAULT_MAX_PRINCIPALS}, the gateway's default
`;

class UsageError extends Error {}

function isParseArgsError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

const COMMON = {
  traces: { type: 'string' },
  model: { type: 'string' },
  meta: { type: 'string' },
  'max-principals': { type: 'string' },
} as const;

export async function runModelCommand(args: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case 'score':
        return await score(rest, out);
      case 'eval':
        return await evalCommand(rest, out);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        (command === undefined ? err : out).write(MODEL_USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown model command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || isParseArgsError(e)) {
      err.write(`ztgw model: ${(e as Error).message}\n\n${MODEL_USAGE}`);
      return 2;
    }
    if (e instanceof TraceError) {
      err.write(`${e.message}\n`);
      return 2;
    }
    if (e instanceof RiskModelError) {
      err.write(`ztgw model: ${e.message}${e.cause instanceof Error ? ` (${e.cause.message})` : ''}\n`);
      return e.reason === 'inference' ? 1 : 2;
    }
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'EACCES' || (e as NodeJS.ErrnoException).code === 'EISDIR') {
      err.write(`ztgw model: ${(e as Error).message}\n`);
      return 2;
    }
    throw e;
  }
}

interface Common {
  traces: string;
  modelPath: string;
  metaPath: string;
  maxPrincipals: number;
}

function common(values: { traces?: string; model?: string; meta?: string; 'max-principals'?: string }): Common {
  if (values.traces === undefined) throw new UsageError('--traces FILE is required');
  const modelPath = resolve(values.model ?? DEFAULT_MODEL);
  const metaPath = resolve(values.meta ?? modelPath.replace(/\.onnx$/, '') + '.meta.json');
  const maxPrincipals = values['max-principals'] === undefined ? DEFAULT_MAX_PRINCIPALS : Number(values['max-principals']);
  if (!Number.isInteger(maxPrincipals) || maxPrincipals < 1) throw new UsageError('--max-principals must be a positive integer');
  return { traces: resolve(values.traces), modelPath, metaPath, maxPrincipals };
}

async function withModel<T>(c: Common, fn: (model: RiskModel) => Promise<T>): Promise<T> {
  const model = await loadRiskModel({ modelPath: c.modelPath, metaPath: c.metaPath });
  try {
    return await fn(model);
  } finally {
    await model.close();
  }
}

async function score(args: string[], stdout: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { ...COMMON, out: { type: 'string' } } });
  const c = common(values);
  if (values.out === undefined) throw new UsageError('--out FILE is required (- for stdout)');
  // The trace first: a bad line is reported before the model is loaded or anything written.
  const lines = await readTraceFile(c.traces);
  const scores = await withModel(c, (model) => scoreTrace(model, lines, { maxPrincipals: c.maxPrincipals }));
  const file = values.out === '-' ? undefined : createWriteStream(resolve(values.out));
  const sink: NodeJS.WritableStream = file ?? stdout;
  let chunk = '';
  for (let i = 0; i < lines.length; i++) {
    chunk += `${JSON.stringify({ ts: lines[i]!.ts, principal: lines[i]!.principal, score: scores[i]! })}\n`;
    if (chunk.length > 65_536) {
      if (!sink.write(chunk)) await once(sink, 'drain');
      chunk = '';
    }
  }
  if (file === undefined) sink.write(chunk);
  else await new Promise<void>((ok, fail) => (file.once('error', fail), file.end(chunk, ok)));
  return 0;
}

async function evalCommand(args: string[], out: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { ...COMMON, json: { type: 'boolean', default: false } } });
  const c = common(values);
  const lines = await readTraceFile(c.traces, { label: true });
  const { scores, flag, version } = await withModel(c, async (model) => ({
    scores: await scoreTrace(model, lines, { maxPrincipals: c.maxPrincipals }),
    flag: model.meta.thresholds.flag,
    version: model.version,
  }));
  const baseline = rateZ(lines);
  const scored: Scored[] = lines.map((l, i) => ({ score: scores[i]!, baseline: baseline[i]!, label: l.label! }));
  const result = evaluate(scored, flag);
  if (result.benignLines === 0) throw new UsageError('the trace has no "label": "benign" lines: false-positive rates need them');
  if (values.json) {
    out.write(`${JSON.stringify({ model: version, flagThreshold: flag, ...result })}\n`);
    return 0;
  }
  const families = Object.keys(result.families).length;
  out.write(`model ${version}; ${lines.length} lines, ${result.benignLines} benign; flag threshold ${flag.toFixed(3)}, benign lines over it ${(result.fprAtFlag * 100).toFixed(2)} %\n`);
  out.write(families === 0 ? 'no attack lines (labels other than "benign")\n' : `${formatFigures(result.families)}\n`);
  return 0;
}
