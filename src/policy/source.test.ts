// The live policy set: a reload of any text either swaps in a whole good set or reports
// why not and keeps the last good one. It runs in a timer, where an exception would end
// the process: `request.constructor` in a condition once did exactly that.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadPolicyDir } from './load.ts';
import { createPolicySource, type PolicySource, type PolicySourceOptions } from './source.ts';

const policy = (when: string) => `apiVersion: zt-gateway/v1
name: p
rules:
  - name: r
    effect: allow
    when: ${JSON.stringify(when)}
`;
const GOOD = '"eng" in identity.groups';
const KNOWN = { tiers: new Set<string>(), upstreams: new Set<string>() };

let dir: string;
let source: PolicySource | undefined;
let logs: Record<string, unknown>[];
let reloads: ('ok' | 'failed')[];

function open(extra: Partial<PolicySourceOptions> = {}): PolicySource {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  source = createPolicySource({ dir, known: KNOWN, logger: pino(sink), debounceMs: 20, onReload: (r) => reloads.push(r), ...extra });
  return source;
}

/** Polls until `done` holds; a deadline far above the debounce, for a busy machine. */
async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ztgw-source-'));
  writeFileSync(join(dir, 'p.yaml'), policy(GOOD));
  logs = [];
  reloads = [];
});

afterEach(() => {
  source?.close();
  source = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('reload', () => {
  it.each(['request.constructor == "x"', 'has(request.toString)', 'device.posture.valueOf', '(((('.repeat(200), `${'9'.repeat(40)} > 0`])(
    'of %s: reported with file:line, the last good set kept, nothing thrown',
    (when) => {
      const s = open({ watch: false });
      const good = s.current.set.hash;
      writeFileSync(join(dir, 'p.yaml'), policy(when));
      let issues: ReturnType<PolicySource['reload']>;
      expect(() => (issues = s.reload())).not.toThrow();
      expect(issues!).toEqual([expect.objectContaining({ file: join(dir, 'p.yaml'), line: 6, message: expect.stringMatching(/^CEL (syntax|type) error/) })]);
      expect(s.current.set.hash).toBe(good);
      expect(s.lastError).toMatch(/p\.yaml:6:\d+/);
      expect(reloads).toEqual(['failed']);
    },
  );

  it('from the directory watcher: a bad edit is a reported failure, then a good edit lands', async () => {
    const s = open();
    const good = s.current.set.hash;
    writeFileSync(join(dir, 'p.yaml'), policy('request.constructor == "x" && has(identity.toString)'));
    // Were the timer to throw, vitest would report the uncaught exception and fail the run.
    await until(() => reloads.includes('failed'), 'the failed reload');
    expect(s.current.set.hash).toBe(good);
    expect(logs.find((l) => l.msg === 'policy reload failed; keeping the last good set')).toMatchObject({ keeping: good });
    writeFileSync(join(dir, 'p.yaml'), policy('"sre" in identity.groups'));
    await until(() => s.current.set.hash !== good, 'the good edit');
    expect(s.lastError).toBeUndefined();
  });

  it('a compiler that throws (what nobody foresaw) is a reported failure too, in the timer as in reload()', async () => {
    let fail = false;
    const s = open({
      load: (d, known) => {
        if (fail) throw new TypeError("Cannot read properties of undefined (reading 'kind')");
        return loadPolicyDir(d, known);
      },
    });
    const good = s.current.set.hash;
    fail = true;
    expect(s.reload()).toEqual([expect.objectContaining({ file: dir, message: expect.stringContaining("reading 'kind'") })]);
    writeFileSync(join(dir, 'p.yaml'), policy('"sre" in identity.groups'));
    await until(() => reloads.length >= 2, 'the watcher reload');
    expect(reloads).toEqual(['failed', 'failed']);
    expect(s.current.set.hash).toBe(good);
    expect(s.lastError).toMatch(/could not be compiled/);
  });

  it('a metrics hook that throws does not undo a good reload', () => {
    const s = open({
      watch: false,
      onReload: () => {
        throw new Error('hook');
      },
    });
    writeFileSync(join(dir, 'p.yaml'), policy('"sre" in identity.groups'));
    const before = s.current.set.hash;
    expect(s.reload()).toBeUndefined();
    expect(s.current.set.hash).not.toBe(before);
  });

  it('logs the warnings of a set that loads (matches() over the path)', () => {
    writeFileSync(join(dir, 'p.yaml'), policy('request.path.matches("^/api/")'));
    open({ watch: false });
    expect(logs.find((l) => l.msg === 'policy conditions to review')).toMatchObject({
      warnings: [expect.stringMatching(/p\.yaml:6:\d+: rules\[0\]\.when: at 1:13 of the condition: matches\(\) on request\.path/)],
    });
  });
});
