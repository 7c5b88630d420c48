// The policy directory watch: a burst of edits is one reload, a directory that cannot be
// watched is reported, never thrown.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { watchPolicyDir, type PolicyDirWatch } from './source.ts';

let dir: string;
let watcher: PolicyDirWatch | undefined;
let logs: Record<string, unknown>[];

const logger = () =>
  pino(
    new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    }),
  );

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-source-'));
  logs = [];
});

afterEach(() => {
  watcher?.close();
  watcher = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('watchPolicyDir', () => {
  it('calls back once for a burst of writes, after the debounce', async () => {
    let calls = 0;
    watcher = watchPolicyDir({ dir, debounceMs: 300, logger: logger(), onChange: () => calls++ });
    for (let i = 0; i < 5; i++) writeFileSync(join(dir, 'p.yaml'), `# edit ${i}\n`);
    const deadline = Date.now() + 5000;
    while (calls === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 1000)); // no second call for the same burst
    expect(calls).toBe(1);
  });

  it('reports a directory it cannot watch and does not throw; close() stops pending calls', async () => {
    expect(() => (watcher = watchPolicyDir({ dir: join(dir, 'missing'), debounceMs: 10, logger: logger(), onChange: () => {} }))).not.toThrow();
    expect(logs.find((l) => l.msg === 'policy directory cannot be watched; reload with SIGHUP')).toBeDefined();
    let calls = 0;
    const w = watchPolicyDir({ dir, debounceMs: 200, logger: logger(), onChange: () => calls++ });
    writeFileSync(join(dir, 'p.yaml'), '# edit\n');
    await new Promise((r) => setTimeout(r, 50));
    w.close();
    await new Promise((r) => setTimeout(r, 1000));
    expect(calls).toBe(0);
  });
});
