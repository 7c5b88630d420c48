import { describe, expect, it } from 'vitest';
import { REST, stageShares, type CpuProfile } from './stage-profile.ts';

const SRC = 'file:///repo/src';
const frame = (id: number, functionName: string, url: string, children: number[] = []) => ({ id, callFrame: { functionName, url }, children });

// root ─ startup (module loading)
//      ─ (idle)
//      ─ onRequest (server.ts) ─ runPipeline ─ authz stage ─ evaluate (policy)
//                                            ─ authn stage
//                                            ─ runPipeline (resumed) ─ assertion stage
//      ─ proxy (pipeline/proxy.ts) ─ route.ts helper (not a stage: not called by runPipeline)
const profile: CpuProfile = {
  nodes: [
    frame(1, '(root)', '', [2, 3, 4, 10]),
    frame(2, 'compile', 'node:internal/modules'),
    frame(3, '(idle)', ''),
    frame(4, 'onRequest', `${SRC}/server/data-plane.ts`, [5]),
    frame(5, 'runPipeline', `${SRC}/pipeline/run.ts`, [6, 8, 9]),
    frame(6, '', `${SRC}/pipeline/authz.ts`, [7]),
    frame(7, 'evaluate', `${SRC}/policy/evaluate.ts`),
    frame(8, '', `${SRC}/pipeline/authn.ts`),
    frame(9, 'runPipeline', `${SRC}/pipeline/run.ts`, [12]),
    frame(10, 'proxy', `${SRC}/pipeline/proxy.ts`, [11]),
    frame(11, 'upstreamPathFor', `${SRC}/pipeline/route.ts`),
    frame(12, '', `${SRC}/pipeline/assertion.ts`),
  ],
  // The first three samples come before any request reached the pipeline: left out.
  samples: [2, 2, 4, 5, 6, 7, 7, 8, 3, 3, 10, 11, 12, 9],
  timeDeltas: [0, 500, 10, 10, 20, 30, 30, 40, 100, 100, 50, 50, 20, 10],
};

describe('stageShares', () => {
  const shares = stageShares(profile, 10);
  const us = (part: string) => shares.find((s) => s.part === part)?.usPerResponse;

  it('gives each stage its subtree, callees included, per response', () => {
    expect(us('authz')).toBe(8); // 20 + 30 + 30
    expect(us('authn')).toBe(4);
    expect(us('assertion')).toBe(2); // reached through the resumed runPipeline
  });

  it('counts the proxy with what it calls, and a pipeline helper outside a stage is not that stage', () => {
    expect(us('proxy')).toBe(10);
    expect(us('route')).toBeUndefined();
  });

  it('leaves out idle time and start-up before the first request', () => {
    expect(us('(idle)')).toBeUndefined();
    // runPipeline 10 + resumed runPipeline 10; start-up's 500 and the sample before it are not there.
    expect(us(REST)).toBe(2);
    expect(shares.at(-1)!.part).toBe(REST);
    const busy = 8 + 4 + 2 + 10 + 2;
    expect(shares.find((s) => s.part === 'authz')!.share).toBeCloseTo(8 / busy);
    expect(shares.reduce((n, s) => n + s.share, 0)).toBeCloseTo(1);
  });
});
