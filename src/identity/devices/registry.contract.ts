// The behaviour every DeviceRegistry store must have, as one suite run against each of
// them (registry.test.ts), in the manner of undici's cache-store-test-utils. A new store
// passes this before it is used; store-specific behaviour (watching, pub/sub) is tested
// beside it.
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeviceValidationError, type DeviceRecord, type DeviceRegistry, type EnrollInput } from './registry.ts';

/** Builds a new, empty registry that reads time from `now`. */
export type MakeRegistry = (opts: { now: () => Date }) => DeviceRegistry | Promise<DeviceRegistry>;

/** A well-formed fingerprint: the base64url SHA-256 of `seed`. */
export function fingerprint(seed: string): string {
  return createHash('sha256').update(seed).digest('base64url');
}

export function deviceInput(seed: string, overrides: Partial<EnrollInput> = {}): EnrollInput {
  return {
    id: fingerprint(seed),
    owner: `user-${seed}`,
    posture: {
      managed: true,
      diskEncrypted: true,
      os: 'macOS',
      osVersion: '14.5',
      lastCheckIn: '2025-03-01T09:00:00.000Z',
      trustLevel: 'high',
    },
    ...overrides,
  };
}

const T0 = new Date('2025-03-01T10:00:00.000Z');

export function registryContract(name: string, make: MakeRegistry): void {
  describe(`DeviceRegistry contract: ${name}`, () => {
    let registry: DeviceRegistry;
    let clock: Date;

    beforeEach(async () => {
      clock = T0;
      registry = await make({ now: () => clock });
    });
    afterEach(async () => {
      await registry.close();
    });

    it('enrolls a device, stamping enrolledAt from the clock; get and list return it', async () => {
      const input = deviceInput('a');
      const record = await registry.enroll(input);
      expect(record).toEqual({ ...input, enrolledAt: T0.toISOString() });
      expect(record.revokedAt).toBeUndefined();
      expect(await registry.get(input.id)).toEqual(record);
      expect(await registry.list()).toEqual([record]);
    });

    it('keeps an explicit enrolledAt and a label', async () => {
      const input = deviceInput('b', { enrolledAt: '2024-12-24T18:30:00.000Z', label: "alice's laptop" });
      const record = await registry.enroll(input);
      expect(record.enrolledAt).toBe('2024-12-24T18:30:00.000Z');
      expect(await registry.get(input.id)).toEqual({ ...input });
    });

    it('returns undefined for an unknown id and for a malformed one', async () => {
      await registry.enroll(deviceInput('a'));
      expect(await registry.get(fingerprint('unknown'))).toBeUndefined();
      expect(await registry.get('not-a-fingerprint')).toBeUndefined();
      expect(await registry.get('')).toBeUndefined();
    });

    it('lists every device, sorted by id', async () => {
      const seeds = ['a', 'b', 'c', 'd', 'e'];
      for (const s of seeds) await registry.enroll(deviceInput(s));
      const ids = (await registry.list()).map((r) => r.id);
      expect(ids).toEqual(seeds.map(fingerprint).sort());
    });

    it('starts empty', async () => {
      expect(await registry.list()).toEqual([]);
    });

    it('revoke marks revokedAt; the device stays listed and get shows it', async () => {
      const input = deviceInput('a');
      await registry.enroll(input);
      await registry.enroll(deviceInput('b'));
      const at = new Date('2025-03-02T08:00:00.000Z');
      expect(await registry.revoke(input.id, at)).toBe(true);
      expect((await registry.get(input.id))?.revokedAt).toBe(at.toISOString());
      const listed = await registry.list();
      expect(listed).toHaveLength(2);
      expect(listed.find((r) => r.id === input.id)).toEqual({ ...input, enrolledAt: T0.toISOString(), revokedAt: at.toISOString() });
      expect((await registry.get(fingerprint('b')))?.revokedAt).toBeUndefined();
    });

    it('revoke defaults to now and keeps the first revocation time', async () => {
      const { id } = await registry.enroll(deviceInput('a'));
      clock = new Date('2025-03-01T11:00:00.000Z');
      expect(await registry.revoke(id)).toBe(true);
      expect(await registry.revoke(id, new Date('2025-03-05T00:00:00.000Z'))).toBe(true);
      expect((await registry.get(id))?.revokedAt).toBe('2025-03-01T11:00:00.000Z');
    });

    it('revoke of an unknown device is false and creates nothing', async () => {
      expect(await registry.revoke(fingerprint('ghost'))).toBe(false);
      expect(await registry.get(fingerprint('ghost'))).toBeUndefined();
      expect(await registry.list()).toEqual([]);
    });

    it('revoke of a malformed id rejects with DeviceValidationError', async () => {
      await expect(registry.revoke('short')).rejects.toBeInstanceOf(DeviceValidationError);
    });

    it('re-enrolling replaces owner, issuer, posture and label but keeps a revocation', async () => {
      const first = deviceInput('a', { label: 'old', issuer: 'https://idp-a.example/' });
      await registry.enroll(first);
      await registry.revoke(first.id, new Date('2025-03-01T10:30:00.000Z'));
      clock = new Date('2025-03-01T12:00:00.000Z');
      const second = deviceInput('a', { owner: 'bob', issuer: 'https://idp-b.example/', posture: { ...first.posture, trustLevel: 'low', managed: false } });
      const record = await registry.enroll(second);
      expect(record).toEqual({ ...second, enrolledAt: '2025-03-01T12:00:00.000Z', revokedAt: '2025-03-01T10:30:00.000Z' });
      expect(await registry.get(first.id)).toEqual(record);
      expect(await registry.list()).toEqual([record]);
    });

    it('re-enrolling with reinstate clears the revocation', async () => {
      const first = deviceInput('a', { label: 'old' });
      await registry.enroll(first);
      await registry.revoke(first.id, new Date('2025-03-01T10:30:00.000Z'));
      clock = new Date('2025-03-01T12:00:00.000Z');
      const second = deviceInput('a', { owner: 'bob' });
      const record = await registry.enroll(second, { reinstate: true });
      expect(record).toEqual({ ...second, enrolledAt: '2025-03-01T12:00:00.000Z' });
      expect(await registry.get(first.id)).toEqual(record);
      // and reinstating a device that was never revoked is an ordinary enrolment
      expect(await registry.enroll(deviceInput('b'), { reinstate: true })).toEqual({ ...deviceInput('b'), enrolledAt: '2025-03-01T12:00:00.000Z' });
    });

    it('keeps the owner\'s issuer; a record without one reads back without one', async () => {
      const withIssuer = await registry.enroll(deviceInput('a', { issuer: 'https://idp.example/' }));
      expect((await registry.get(withIssuer.id))?.issuer).toBe('https://idp.example/');
      const without = await registry.enroll(deviceInput('b'));
      expect('issuer' in ((await registry.get(without.id)) as object)).toBe(false);
    });

    it('update changes posture fields and the label only, and returns the record', async () => {
      const { id } = await registry.enroll(deviceInput('a', { label: 'lab', issuer: 'https://idp.example/' }));
      const updated = await registry.update(id, { posture: { managed: false, os: 'Windows', lastCheckIn: '2025-03-05T08:00:00.000Z' }, label: 'new' });
      const expected = {
        ...deviceInput('a', { label: 'new', issuer: 'https://idp.example/' }),
        enrolledAt: T0.toISOString(),
        posture: { ...deviceInput('a').posture, managed: false, os: 'Windows', lastCheckIn: '2025-03-05T08:00:00.000Z' },
      };
      expect(updated).toEqual(expected);
      expect(await registry.get(id)).toEqual(expected);
      expect(await registry.list()).toEqual([expected]);
    });

    it('update (a check-in) never clears a revocation', async () => {
      const { id } = await registry.enroll(deviceInput('a'));
      await registry.revoke(id, new Date('2025-03-02T00:00:00.000Z'));
      const updated = await registry.update(id, { posture: { lastCheckIn: '2025-03-03T00:00:00.000Z' } });
      expect(updated?.revokedAt).toBe('2025-03-02T00:00:00.000Z');
      expect(updated?.posture.lastCheckIn).toBe('2025-03-03T00:00:00.000Z');
      expect((await registry.get(id))?.revokedAt).toBe('2025-03-02T00:00:00.000Z');
    });

    it('update of an unknown device is undefined and creates nothing', async () => {
      expect(await registry.update(fingerprint('ghost'), { posture: { managed: true } })).toBeUndefined();
      expect(await registry.list()).toEqual([]);
    });

    it.each([
      ['a malformed id', 'short', { posture: { managed: true } }, 'id'],
      ['a wrong type', 'ok', { posture: { managed: 'yes' } }, 'posture.managed'],
      ['a bad date', 'ok', { posture: { lastCheckIn: 'now' } }, 'posture.lastCheckIn'],
      ['an unknown posture field', 'ok', { posture: { rooted: false } }, 'posture.rooted'],
      ['the owner', 'ok', { owner: 'mallory' }, 'owner'],
      ['the revocation', 'ok', { revokedAt: undefined }, 'revokedAt'],
      ['the issuer', 'ok', { issuer: 'https://evil.example/' }, 'issuer'],
    ])('update rejects %s with DeviceValidationError, changing nothing', async (_, which, change, field) => {
      const record = await registry.enroll(deviceInput('a'));
      const err = await registry.update(which === 'ok' ? record.id : which, change as never).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DeviceValidationError);
      expect((err as DeviceValidationError).issues.map((i) => i.field)).toContain(field);
      expect(await registry.get(record.id)).toEqual(record);
    });

    it('concurrent updates of one device all land', async () => {
      const { id } = await registry.enroll(deviceInput('a'));
      await Promise.all([
        registry.update(id, { posture: { os: 'Linux' } }),
        registry.update(id, { posture: { osVersion: '6.9' } }),
        registry.update(id, { posture: { trustLevel: 'medium' } }),
      ]);
      expect((await registry.get(id))?.posture).toMatchObject({ os: 'Linux', osVersion: '6.9', trustLevel: 'medium' });
    });

    it('ignores a revokedAt passed to enroll: enrolling is never revoking', async () => {
      const input = { ...deviceInput('a'), revokedAt: '2025-01-01T00:00:00.000Z' } as EnrollInput;
      const record = await registry.enroll(input);
      expect(record.revokedAt).toBeUndefined();
      expect((await registry.get(record.id))?.revokedAt).toBeUndefined();
    });

    const invalid: [string, (i: EnrollInput) => unknown, string][] = [
      ['a short id', (i) => ({ ...i, id: 'abc' }), 'id'],
      ['a base64 (not base64url) id', (i) => ({ ...i, id: `${'+'.repeat(42)}A` }), 'id'],
      ['a padded id', (i) => ({ ...i, id: `${i.id.slice(0, 43)}=` }), 'id'],
      ['a non-canonical id', (i) => ({ ...i, id: `${'A'.repeat(42)}B` }), 'id'],
      ['a numeric id', (i) => ({ ...i, id: 42 }), 'id'],
      ['an empty owner', (i) => ({ ...i, owner: '  ' }), 'owner'],
      ['an owner with a newline', (i) => ({ ...i, owner: 'alice\nadmin' }), 'owner'],
      ['no posture', (i) => ({ ...i, posture: undefined }), 'posture'],
      ['a string for a boolean', (i) => ({ ...i, posture: { ...i.posture, managed: 'yes' } }), 'posture.managed'],
      ['a number for osVersion', (i) => ({ ...i, posture: { ...i.posture, osVersion: 14.5 } }), 'posture.osVersion'],
      ['an unknown trust level', (i) => ({ ...i, posture: { ...i.posture, trustLevel: 'max' } }), 'posture.trustLevel'],
      ['a lastCheckIn that is not a date', (i) => ({ ...i, posture: { ...i.posture, lastCheckIn: 'yesterday' } }), 'posture.lastCheckIn'],
      ['a lastCheckIn without a zone', (i) => ({ ...i, posture: { ...i.posture, lastCheckIn: '2025-03-01T09:00:00' } }), 'posture.lastCheckIn'],
      ['an invalid enrolledAt', (i) => ({ ...i, enrolledAt: '2025-13-45T00:00:00Z' }), 'enrolledAt'],
      ['an unknown field', (i) => ({ ...i, colour: 'blue' }), 'colour'],
      ['an unknown posture field', (i) => ({ ...i, posture: { ...i.posture, jailbroken: false } }), 'posture.jailbroken'],
      ['an empty label', (i) => ({ ...i, label: '' }), 'label'],
      ['an empty issuer', (i) => ({ ...i, issuer: '' }), 'issuer'],
      ['an issuer with a newline', (i) => ({ ...i, issuer: 'https://idp/\nx' }), 'issuer'],
    ];
    it.each(invalid)('rejects %s with DeviceValidationError naming the field, storing nothing', async (_, mutate, field) => {
      const input = mutate(deviceInput('a')) as EnrollInput;
      const err = await registry.enroll(input).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DeviceValidationError);
      expect((err as DeviceValidationError).code).toBe('ERR_DEVICE_INVALID');
      expect((err as DeviceValidationError).issues.map((i) => i.field)).toContain(field);
      expect((err as Error).message).toContain(field);
      expect(await registry.list()).toEqual([]);
    });

    it('reports every problem of a record at once', async () => {
      const input = deviceInput('a', { owner: '' });
      const bad = { ...input, posture: { ...input.posture, trustLevel: 'max', diskEncrypted: 1 } } as unknown as EnrollInput;
      const err = (await registry.enroll(bad).catch((e: unknown) => e)) as DeviceValidationError;
      expect(err.issues.map((i) => i.field).sort()).toEqual(['owner', 'posture.diskEncrypted', 'posture.trustLevel']);
    });

    it('returns frozen records: a caller cannot change what others read', async () => {
      await registry.enroll(deviceInput('a'));
      const record = (await registry.get(fingerprint('a'))) as DeviceRecord;
      expect(Object.isFrozen(record)).toBe(true);
      expect(Object.isFrozen(record.posture)).toBe(true);
      const [listed] = await registry.list();
      expect(Object.isFrozen(listed)).toBe(true);
    });

    it('close is idempotent', async () => {
      await registry.close();
      await registry.close();
    });
  });
}
