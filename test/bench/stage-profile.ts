// Each pipeline stage's CPU per response, read from a V8 CPU profile of a gateway under load
// (`node --cpu-prof`), so the next regression in a stage is visible in `npm run bench`
// without any timing code on the request path. A stage's time is the whole subtree of the
// stage function runPipeline calls (src/pipeline/run.ts), its callees included; the
// proxy and the access line are counted where they are reached outside a stage. Profiles are
// ratios within one process: they hold on a noisy machine where CPU µs/req per round does not.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface CpuProfile {
  readonly nodes: readonly { id: number; callFrame: { functionName: string; url: string }; children?: readonly number[] }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface StageShare {
  readonly part: string;
  /** Microseconds of the main thread per response (the profiler's own overhead included). */
  readonly usPerResponse: number;
  /** Of the main thread's busy time (idle excluded). */
  readonly share: number;
}

const STAGE_FILE = /\/src\/pipeline\/(\w+)\.ts$/;
const RUN_PIPELINE = /\/src\/pipeline\/run\.ts$/;
/** Reached outside the stages, after them: named so their cost is not lost in "rest". */
const OUTSIDE: readonly (readonly [string, RegExp])[] = [
  ['proxy', /\/src\/(?:pipeline\/(?:proxy|upstream-headers|response-headers)\.ts|upstream\/)/],
  ['access line', /\/src\/observability\/access-log\.ts$/],
];
export const REST = 'rest (server, HTTP, undici, GC)';
const IDLE = '(idle)';

/**
 * Per part, µs per response. Samples before the first request reached the pipeline (start-up,
 * module loading) are left out: `responses` counts what came after.
 */
export function stageShares(profile: CpuProfile, responses: number): StageShare[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const partOf = new Map<number, string>();
  const inPipeline = new Set<number>();
  const label = (id: number, part: string | undefined, parentUrl: string, pipeline: boolean): void => {
    const node = byId.get(id)!;
    const { url, functionName } = node.callFrame;
    let own = part;
    // runPipeline resumes itself after an asynchronous stage: that frame is not a stage.
    if (own === undefined && RUN_PIPELINE.test(parentUrl) && !RUN_PIPELINE.test(url)) own = STAGE_FILE.exec(url)?.[1];
    if (own === undefined) own = OUTSIDE.find(([, re]) => re.test(url))?.[0];
    const seen = pipeline || RUN_PIPELINE.test(url);
    if (seen) inPipeline.add(id);
    partOf.set(id, own ?? (functionName === IDLE ? IDLE : REST));
    for (const child of node.children ?? []) label(child, own, url, seen);
  };
  label(profile.nodes[0]!.id, undefined, '', false);

  const first = profile.samples.findIndex((id) => inPipeline.has(id));
  const totals = new Map<string, number>();
  for (let i = Math.max(first, 0); i < profile.samples.length; i++) {
    const part = partOf.get(profile.samples[i]!)!;
    totals.set(part, (totals.get(part) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  totals.delete(IDLE);
  const busy = [...totals.values()].reduce((a, b) => a + b, 0);
  return [...totals]
    .map(([part, us]) => ({ part, usPerResponse: us / responses, share: busy === 0 ? 0 : us / busy }))
    .sort((a, b) => (a.part === REST ? 1 : b.part === REST ? -1 : b.usPerResponse - a.usPerResponse));
}

/** The one .cpuprofile node wrote into `dir` on exit. */
export async function readProfile(dir: string): Promise<CpuProfile> {
  const file = (await readdir(dir)).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error(`no .cpuprofile in ${dir} (did the gateway exit cleanly?)`);
  return JSON.parse(await readFile(join(dir, file), 'utf8')) as CpuProfile;
}
