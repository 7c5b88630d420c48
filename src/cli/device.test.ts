import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { createFileRegistry } from '../identity/devices/file-store.ts';
import { fingerprint } from '../identity/devices/registry.contract.ts';
import { DeviceRegistryUnavailableError, type DeviceRecord, type DeviceRegistry } from '../identity/devices/registry.ts';
import { runDeviceCommand } from './device.ts';

const NOW = new Date('2025-03-01T10:00:00.000Z');
const A = fingerprint('alice-laptop');
const B = fingerprint('bob-desktop');

let dir: string;
let n = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ztgw-cli-device-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function capture() {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString('utf8')));
  return { stream, text: () => text };
}

describe('ztgw device', () => {
  let file: string;
  let registry: DeviceRegistry;
  beforeEach(() => {
    file = join(dir, `devices-${++n}.yaml`);
    registry = createFileRegistry({ file, now: () => NOW });
  });
  afterEach(async () => {
    await registry.close();
  });

  async function run(...args: string[]) {
    const out = capture();
    const err = capture();
    const code = await runDeviceCommand(args, registry, out.stream, err.stream, () => NOW);
    return { code, out: out.text(), err: err.text() };
  }

  it('enroll writes the device with its posture; check-in is now', async () => {
    const r = await run('enroll', '--id', A, '--owner', 'alice', '--managed', '--disk-encrypted', '--os', 'macOS', '--os-version', '14.5', '--trust', 'high', '--label', 'MacBook');
    expect(r).toEqual({ code: 0, out: `enrolled ${A} (owner alice, trust high)\n`, err: '' });
    const expected: DeviceRecord = {
      id: A,
      owner: 'alice',
      label: 'MacBook',
      enrolledAt: NOW.toISOString(),
      posture: { managed: true, diskEncrypted: true, os: 'macOS', osVersion: '14.5', lastCheckIn: NOW.toISOString(), trustLevel: 'high' },
    };
    expect(await registry.get(A)).toEqual(expected);
    expect(parseYaml(await readFile(file, 'utf8'))).toEqual({ devices: [expected] });
  });

  it('takes a fingerprint that begins with "-" (one in 64 do) after --id', async () => {
    const dashed = `-${A.slice(1)}`;
    expect((await run('enroll', '--id', dashed, '--owner', 'alice')).code).toBe(0);
    expect((await run('revoke', '--id', dashed)).code).toBe(0);
    expect((await registry.get(dashed))?.revokedAt).toBeDefined();
  });

  it('enroll defaults to an unmanaged, unencrypted, low-trust device with unknown OS', async () => {
    expect((await run('enroll', '--id', A, '--owner', 'alice')).code).toBe(0);
    expect((await registry.get(A))?.posture).toEqual({
      managed: false,
      diskEncrypted: false,
      os: '',
      osVersion: '',
      lastCheckIn: NOW.toISOString(),
      trustLevel: 'low',
    });
  });

  it('list prints a table with every device, revoked ones marked', async () => {
    await run('enroll', '--id', A, '--owner', 'alice', '--managed', '--os', 'macOS', '--os-version', '14.5', '--trust', 'high', '--label', 'MacBook');
    await run('enroll', '--id', B, '--owner', 'bob');
    await registry.revoke(B, new Date('2025-03-02T00:00:00.000Z'));
    const r = await run('list');
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^ID\s+OWNER\s+STATUS\s+TRUST\s+MANAGED\s+DISK ENC\s+OS\s+LAST CHECK-IN\s+ENROLLED\s+LABEL$/);
    const row = (id: string) => lines.find((l) => l.startsWith(id))!;
    expect(row(A)).toMatch(/\balice\s+active\s+high\s+yes\s+no\s+macOS 14\.5\s+2025-03-01T10:00:00\.000Z\s+2025-03-01T10:00:00\.000Z\s+MacBook$/);
    expect(row(B)).toMatch(/\bbob\s+revoked 2025-03-02T00:00:00\.000Z\s+low\s+no\s+no\s+-\s/);
    // Columns line up: every row puts OWNER at the same offset.
    expect(new Set(lines.map((l) => l.search(/\s(OWNER|alice|bob)\b/))).size).toBe(1);
  });

  it('list --json prints the records', async () => {
    await run('enroll', '--id', A, '--owner', 'alice');
    const r = await run('list', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual(await registry.list());
  });

  it('list says so when nothing is enrolled', async () => {
    expect(await run('list')).toEqual({ code: 0, out: 'no devices enrolled\n', err: '' });
    expect(JSON.parse((await run('list', '--json')).out)).toEqual([]);
  });

  it('revoke marks the device and reports when', async () => {
    await run('enroll', '--id', A, '--owner', 'alice');
    const r = await run('revoke', '--id', A);
    expect(r).toEqual({ code: 0, out: `revoked ${A} at ${NOW.toISOString()}\n`, err: '' });
    expect((await registry.get(A))?.revokedAt).toBe(NOW.toISOString());
    // Re-enrolling keeps it revoked, and says so…
    const again = await run('enroll', '--id', A, '--owner', 'alice');
    expect(again.code).toBe(0);
    expect(again.out).toContain(`note: ${A} stays revoked (since ${NOW.toISOString()}); re-enroll with --reinstate`);
    expect((await registry.get(A))?.revokedAt).toBe(NOW.toISOString());
    // …only --reinstate brings it back.
    expect((await run('enroll', '--id', A, '--owner', 'alice', '--reinstate')).out).toBe(`enrolled ${A} (owner alice, trust low)\n`);
    expect((await registry.get(A))?.revokedAt).toBeUndefined();
  });

  describe('--issuer', () => {
    const corp = { name: 'corp', issuer: 'https://idp.corp.example/' };
    const partner = { name: 'partner', issuer: 'https://login.partner.example/' };
    async function runWith(issuers: { name: string; issuer: string }[], ...args: string[]) {
      const out = capture();
      const err = capture();
      const code = await runDeviceCommand(args, registry, out.stream, err.stream, () => NOW, issuers);
      return { code, out: out.text(), err: err.text() };
    }

    it('defaults to the only configured issuer, stored as its iss', async () => {
      const r = await runWith([corp], 'enroll', '--id', A, '--owner', 'alice');
      expect(r).toEqual({ code: 0, out: `enrolled ${A} (owner alice at https://idp.corp.example/, trust low)\n`, err: '' });
      expect((await registry.get(A))?.issuer).toBe(corp.issuer);
    });

    it('is required when several issuers are configured', async () => {
      const r = await runWith([corp, partner], 'enroll', '--id', A, '--owner', 'alice');
      expect(r.code).toBe(2);
      expect(r.err).toContain('--issuer is required when several issuers are configured (corp, partner)');
      expect(await registry.list()).toEqual([]);
    });

    it('takes a configured name or iss, and refuses anything else', async () => {
      expect((await runWith([corp, partner], 'enroll', '--id', A, '--owner', 'alice', '--issuer', 'partner')).code).toBe(0);
      expect((await registry.get(A))?.issuer).toBe(partner.issuer);
      expect((await runWith([corp, partner], 'enroll', '--id', B, '--owner', 'bob', '--issuer', corp.issuer)).code).toBe(0);
      expect((await registry.get(B))?.issuer).toBe(corp.issuer);
      const typo = await runWith([corp, partner], 'enroll', '--id', B, '--owner', 'bob', '--issuer', 'crop');
      expect(typo.code).toBe(2);
      expect(typo.err).toContain('--issuer "crop" is not a configured issuer name or iss; configured: corp (https://idp.corp.example/), partner');
      expect((await registry.get(B))?.issuer).toBe(corp.issuer);
    });
  });

  describe('checkin and update', () => {
    const LATER = new Date('2025-03-20T10:00:00.000Z');
    async function runAt(now: Date, ...args: string[]) {
      const out = capture();
      const err = capture();
      const code = await runDeviceCommand(args, registry, out.stream, err.stream, () => now);
      return { code, out: out.text(), err: err.text() };
    }

    it('checkin sets lastCheckIn to now (or --at) and nothing else', async () => {
      await run('enroll', '--id', A, '--owner', 'alice', '--managed', '--trust', 'high', '--label', 'MacBook');
      const before = (await registry.get(A))!;
      const r = await runAt(LATER, 'checkin', '--id', A);
      expect(r).toEqual({ code: 0, out: `checked in ${A} at ${LATER.toISOString()}\n`, err: '' });
      expect(await registry.get(A)).toEqual({ ...before, posture: { ...before.posture, lastCheckIn: LATER.toISOString() } });
      expect((await runAt(LATER, 'checkin', '--id', A, '--at', '2025-03-21T00:00:00+01:00')).code).toBe(0);
      expect((await registry.get(A))?.posture.lastCheckIn).toBe('2025-03-21T00:00:00+01:00');
    });

    it('update changes the posture fields named, with --no-* for false, and checks in', async () => {
      await run('enroll', '--id', A, '--owner', 'alice', '--managed', '--disk-encrypted', '--os', 'macOS', '--os-version', '14.5', '--trust', 'high');
      const r = await runAt(LATER, 'update', '--id', A, '--no-managed', '--os-version', '15.1', '--trust', 'medium', '--label', 'old mac');
      expect(r.code).toBe(0);
      expect(r.out).toBe(`updated ${A} (trust medium, managed no, disk encrypted yes, check-in ${LATER.toISOString()})\n`);
      expect(await registry.get(A)).toMatchObject({
        owner: 'alice',
        label: 'old mac',
        posture: { managed: false, diskEncrypted: true, os: 'macOS', osVersion: '15.1', trustLevel: 'medium', lastCheckIn: LATER.toISOString() },
      });
    });

    it('neither clears a revocation', async () => {
      await run('enroll', '--id', A, '--owner', 'alice');
      await run('revoke', '--id', A);
      const c = await runAt(LATER, 'checkin', '--id', A);
      expect(c.code).toBe(0);
      expect(c.out).toContain(`note: ${A} is revoked (since ${NOW.toISOString()}) and stays refused`);
      expect((await runAt(LATER, 'update', '--id', A, '--managed', '--trust', 'high')).code).toBe(0);
      expect((await registry.get(A))?.revokedAt).toBe(NOW.toISOString());
    });

    it.each([
      [['checkin'], 2, /checkin: --id FP is required/],
      [['checkin', '--id', A, '--managed'], 2, /Unknown option '--managed'/],
      [['update', '--id', A, '--trust', 'ultra'], 2, /--trust must be one of/],
      [['update', '--id', A, '--at', 'yesterday'], 2, /--at: must be an ISO 8601 date-time/],
      [['update', '--id', 'short'], 2, /--id: must be a 43-character/],
      [['checkin', '--id', B], 1, new RegExp(`no device ${B} is enrolled`)],
    ])('%j exits %i', async (args, code, message) => {
      await run('enroll', '--id', A, '--owner', 'alice');
      const before = await registry.get(A);
      const r = await runAt(LATER, ...(args as string[]));
      expect(r.code).toBe(code);
      expect(r.err).toMatch(message);
      expect(await registry.get(A)).toEqual(before);
    });
  });

  it('revoke of an unknown device exits 1', async () => {
    const r = await run('revoke', '--id', B);
    expect(r.code).toBe(1);
    expect(r.err).toBe(`ztgw device: no device ${B} is enrolled\n`);
  });

  it.each([
    [[], /^usage: ztgw device/m],
    [['frobnicate'], /unknown device command "frobnicate"/],
    [['enroll', '--owner', 'alice'], /--id FP is required/],
    [['enroll', '--id', A], /--owner SUB is required/],
    [['enroll', '--id', A, '--owner', 'alice', '--trust', 'ultra'], /--trust must be one of low, medium, high, got "ultra"/],
    [['enroll', '--id', A, '--owner', 'alice', '--colour', 'blue'], /Unknown option '--colour'/],
    [['enroll', '--id'], /--id/],
    [['list', 'extra'], /positional/],
    [['revoke'], /--id FP is required/],
  ])('%j is a usage error: exit 2 with a message and the usage', async (args, message) => {
    const r = await run(...(args as string[]));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err).toContain('usage: ztgw device');
    expect(r.out).toBe('');
    expect(await registry.list()).toEqual([]);
  });

  it('an invalid fingerprint or owner exits 2 naming the flag', async () => {
    const bad = await run('enroll', '--id', 'abc', '--owner', '');
    expect(bad.code).toBe(2);
    expect(bad.err).toContain('ztgw device: --id: must be the base64url SHA-256 fingerprint');
    expect(bad.err).toContain('ztgw device: --owner: must not be empty');
    const padded = await run('revoke', '--id', `${A}=`);
    expect(padded.code).toBe(2);
    expect(padded.err).toMatch(/--id: .*44 characters/);
  });

  it('a broken registry file exits 2 with file:line:col, and is left alone', async () => {
    await writeFile(file, 'devices:\n  - id: [oops\n');
    const r = await run('enroll', '--id', A, '--owner', 'alice');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(new RegExp(`^${file}:\\d+:\\d+: `));
    expect(await readFile(file, 'utf8')).toBe('devices:\n  - id: [oops\n');
  });

  it('help prints the usage and exits 0', async () => {
    const r = await run('help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^usage: ztgw device/);
  });
});

describe('ztgw device against an unavailable registry', () => {
  it('exits 1 with the reason', async () => {
    const down: DeviceRegistry = {
      get: () => Promise.reject(new DeviceRegistryUnavailableError('device registry: Redis HGETALL failed: connect ECONNREFUSED')),
      list: () => Promise.reject(new DeviceRegistryUnavailableError('device registry: Redis SMEMBERS failed: connect ECONNREFUSED')),
      enroll: () => Promise.reject(new DeviceRegistryUnavailableError('x')),
      revoke: () => Promise.reject(new DeviceRegistryUnavailableError('x')),
      update: () => Promise.reject(new DeviceRegistryUnavailableError('x')),
      close: async () => {},
    };
    const out = capture();
    const code = await runDeviceCommand(['list'], down, out.stream);
    expect(code).toBe(1);
    expect(out.text()).toBe('ztgw device: device registry: Redis SMEMBERS failed: connect ECONNREFUSED\n');
  });

  it('lets unexpected errors through to the caller', async () => {
    const broken = { list: () => Promise.reject(new TypeError('bug')) } as unknown as DeviceRegistry;
    await expect(runDeviceCommand(['list'], broken, capture().stream)).rejects.toThrow('bug');
  });
});
