// The device posture registry: which devices are enrolled, whose they are, and what
// their posture was at the last check-in. A device is named by the fingerprint the
// gateway computes from what it presents: the RFC 7638 JWK thumbprint (SHA-256) of its
// DPoP key, or the `x5t#S256` of its client certificate (RFC 8705 §3.1). Both are the
// base64url of a SHA-256 digest, so both are 43 characters.
//
// Two stores implement DeviceRegistry (file-store.ts, redis-store.ts) and one contract
// suite (registry.contract.ts) holds them to the same behaviour. Records are validated
// here, at the boundary, whether they come from an API call, a file or Redis; what a
// store returns is frozen and can be trusted as typed.

import type { DevicePosture, TrustLevel } from '../../core/domain.ts';

export type { DevicePosture, TrustLevel };

export const TRUST_LEVELS: readonly TrustLevel[] = ['low', 'medium', 'high'];

export interface DeviceRecord {
  /** The fingerprint: JWK thumbprint or x5t#S256, base64url, 43 characters. */
  id: string;
  /** The token `sub` of the device's owner. */
  owner: string;
  /**
   * The `iss` of the owner's tokens (the URL, not the config's issuer name: it survives a
   * rename in the config). A `sub` is only unique within its issuer (OIDC Core §2), so the
   * owner is this pair. Absent in records from before it existed: those match only while
   * exactly one issuer is configured (see ownsDevice).
   */
  issuer?: string;
  posture: DevicePosture;
  /** ISO 8601. */
  enrolledAt: string;
  /**
   * ISO 8601; set once, kept so the registry is an audit trail. Re-enrolling keeps it
   * unless the enrolment says `reinstate`: a revocation is never undone by accident.
   */
  revokedAt?: string;
  label?: string;
}

export type EnrollInput = Omit<DeviceRecord, 'enrolledAt' | 'revokedAt'> & { enrolledAt?: string };

export interface EnrollOptions {
  /** Clear a revocation of this id. Without it a re-enrolment keeps revokedAt. */
  reinstate?: boolean;
}

/**
 * What a check-in or an MDM sync may change: posture fields and the label. Never the
 * owner, the issuer or the revocation, so a posture feed cannot hand a device to someone
 * else or bring a revoked one back.
 */
export interface DeviceUpdate {
  posture?: Partial<DevicePosture>;
  label?: string;
}

export interface DeviceRegistry {
  /**
   * The record, revoked or not, or undefined when the id is not enrolled (a malformed
   * id is never enrolled). Rejects with DeviceRegistryUnavailableError when the store
   * cannot answer: an error is never "not enrolled" or "not revoked".
   */
  get(id: string): Promise<DeviceRecord | undefined>;
  /** Every record, revoked ones included, sorted by id. */
  list(): Promise<DeviceRecord[]>;
  /**
   * Adds the device, or replaces it (owner, issuer, posture, label). A revocation stays
   * unless `reinstate` is set. Rejects with DeviceValidationError on a malformed record;
   * nothing is stored then.
   */
  enroll(record: EnrollInput, options?: EnrollOptions): Promise<DeviceRecord>;
  /**
   * Changes posture fields and the label of an enrolled device (a check-in sets
   * posture.lastCheckIn); the revocation, owner and issuer are kept. The new record, or
   * undefined when the device is unknown. Rejects with DeviceValidationError on a
   * malformed id or change; nothing is stored then.
   */
  update(id: string, change: DeviceUpdate): Promise<DeviceRecord | undefined>;
  /**
   * Marks the device revoked at `at` (default now). True when the device is enrolled
   * (and now revoked), false when it is unknown. Revoking a revoked device keeps the
   * first revokedAt: the audit trail records when access ended, not the last click.
   */
  revoke(id: string, at?: Date): Promise<boolean>;
  /** Releases what the store holds (watchers, connections it made). Idempotent. */
  close(): Promise<void>;
}

// ── errors ──────────────────────────────────────────────────────────────────────────
// Store errors, not request errors: the device stage decides what a client sees (its
// failure mode turns Unavailable into DependencyUnavailableError, or allows, by config).

export interface DeviceIssue {
  /** Dotted path such as `posture.trustLevel`; '' for the record itself. */
  field: string;
  message: string;
  /** The field is not one a record has (a file points at its key, not its value). */
  unknown?: boolean;
}

export class DeviceValidationError extends Error {
  static readonly code = 'ERR_DEVICE_INVALID';
  readonly code = DeviceValidationError.code;
  readonly issues: readonly DeviceIssue[];

  constructor(issues: readonly DeviceIssue[], options?: { cause?: unknown }) {
    super(`invalid device record: ${issues.map((i) => (i.field ? `${i.field}: ${i.message}` : i.message)).join('; ')}`, options);
    this.name = 'DeviceValidationError';
    this.issues = issues;
  }
}

/** The store could not answer (Redis down or timing out, a corrupt record). */
export class DeviceRegistryUnavailableError extends Error {
  static readonly code = 'ERR_DEVICE_REGISTRY_UNAVAILABLE';
  readonly code = DeviceRegistryUnavailableError.code;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DeviceRegistryUnavailableError';
  }
}

// ── validation ──────────────────────────────────────────────────────────────────────

// 32 bytes are 256 bits; 43 base64url characters carry 258, so the last character's
// low two bits must be zero. Checking that rejects a second spelling of the same digest.
const SHA256_B64URL = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;

/** True for the canonical base64url (no padding) of a SHA-256 digest. */
export function isDeviceId(id: unknown): id is string {
  return typeof id === 'string' && SHA256_B64URL.test(id);
}

// Owner and label end up in logs, tables and policy input: no control characters
// (log and terminal injection), and a bound on length.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const MAX_TEXT = 256;
// RFC 3339 date-time: the zone is required, so "2025-01-01T00:00" cannot mean a
// different instant on each gateway instance.
const ISO_DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

const RECORD_FIELDS = new Set(['id', 'owner', 'issuer', 'posture', 'enrolledAt', 'revokedAt', 'label']);
const POSTURE_FIELDS = new Set(['managed', 'diskEncrypted', 'os', 'osVersion', 'lastCheckIn', 'trustLevel']);

export type ValidationResult = { ok: true; record: DeviceRecord } | { ok: false; issues: DeviceIssue[] };

/**
 * Checks an untrusted value (an API argument, a file entry, a Redis hash) and returns a
 * frozen DeviceRecord, or every problem found. `enrolledAt` is required here: stores fill
 * it in before validating.
 */
export function validateDevice(value: unknown): ValidationResult {
  const issues: DeviceIssue[] = [];
  const add = (field: string, message: string) => issues.push({ field, message });
  const unknown = (field: string, key: string) => issues.push({ field, message: `unknown field "${key}"`, unknown: true });

  if (!isPlainObject(value)) return { ok: false, issues: [{ field: '', message: `expected an object, got ${typeName(value)}` }] };
  for (const key of Object.keys(value)) if (!RECORD_FIELDS.has(key)) unknown(key, key);

  const { id, owner, issuer, posture, enrolledAt, revokedAt, label } = value;
  if (typeof id !== 'string') add('id', `expected string, got ${typeName(id)}`);
  else if (!isDeviceId(id)) {
    add('id', `must be the base64url SHA-256 fingerprint of the device key (43 characters of A-Z a-z 0-9 - _, no padding), got ${describeId(id)}`);
  }
  text('owner', owner, add, { required: true });
  if (issuer !== undefined) text('issuer', issuer, add, { required: true });
  if (label !== undefined) text('label', label, add, { required: true });
  timestamp('enrolledAt', enrolledAt, add);
  if (revokedAt !== undefined) timestamp('revokedAt', revokedAt, add);

  if (!isPlainObject(posture)) add('posture', `expected an object, got ${typeName(posture)}`);
  else {
    for (const key of Object.keys(posture)) if (!POSTURE_FIELDS.has(key)) unknown(`posture.${key}`, key);
    for (const key of ['managed', 'diskEncrypted'] as const) {
      if (typeof posture[key] !== 'boolean') add(`posture.${key}`, `expected boolean, got ${typeName(posture[key])}`);
    }
    text('posture.os', posture.os, add, { required: false });
    text('posture.osVersion', posture.osVersion, add, { required: false });
    timestamp('posture.lastCheckIn', posture.lastCheckIn, add);
    if (!TRUST_LEVELS.includes(posture.trustLevel as TrustLevel)) {
      add('posture.trustLevel', `must be one of: ${TRUST_LEVELS.map((t) => JSON.stringify(t)).join(', ')}`);
    }
  }
  if (issues.length > 0) return { ok: false, issues };

  const p = posture as unknown as DevicePosture;
  const record: DeviceRecord = {
    id: id as string,
    owner: owner as string,
    ...(issuer !== undefined && { issuer: issuer as string }),
    posture: Object.freeze({
      managed: p.managed,
      diskEncrypted: p.diskEncrypted,
      os: p.os,
      osVersion: p.osVersion,
      lastCheckIn: p.lastCheckIn,
      trustLevel: p.trustLevel,
    }),
    enrolledAt: enrolledAt as string,
  };
  if (revokedAt !== undefined) record.revokedAt = revokedAt as string;
  if (label !== undefined) record.label = label as string;
  return { ok: true, record: Object.freeze(record) };
}

/** validateDevice, throwing DeviceValidationError. */
export function parseDevice(value: unknown): DeviceRecord {
  const result = validateDevice(value);
  if (!result.ok) throw new DeviceValidationError(result.issues);
  return result.record;
}

/**
 * The record an enroll stores: enrolledAt defaulted to `now`, a revokedAt in the input
 * dropped (enrolling is never revoking; the store keeps an existing revocation unless
 * told to reinstate), everything validated. Shared so the stores agree.
 */
export function prepareEnrollment(input: EnrollInput, now: Date): DeviceRecord {
  if (!isPlainObject(input)) throw new DeviceValidationError([{ field: '', message: `expected an object, got ${typeName(input)}` }]);
  const { revokedAt: _ignored, ...rest } = input as EnrollInput & { revokedAt?: unknown };
  return parseDevice({ ...rest, enrolledAt: input.enrolledAt ?? now.toISOString() });
}

/** The record after `change` (see DeviceUpdate), validated; the revocation, owner and issuer untouched. */
export function applyUpdate(record: DeviceRecord, change: DeviceUpdate): DeviceRecord {
  const issues: DeviceIssue[] = [];
  if (!isPlainObject(change)) throw new DeviceValidationError([{ field: '', message: `expected an object, got ${typeName(change)}` }]);
  for (const key of Object.keys(change)) {
    if (key !== 'posture' && key !== 'label') issues.push({ field: key, message: `cannot be changed by an update (only posture and label)`, unknown: true });
  }
  if (change.posture !== undefined && !isPlainObject(change.posture)) issues.push({ field: 'posture', message: `expected an object, got ${typeName(change.posture)}` });
  if (issues.length > 0) throw new DeviceValidationError(issues);
  const posture = change.posture === undefined ? record.posture : { ...record.posture, ...definedOnly(change.posture as object) };
  return parseDevice({ ...record, posture, ...(change.label !== undefined && { label: change.label }) });
}

function definedOnly(o: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

/**
 * Whether the token's (issuer, subject) owns the device. A record without an issuer
 * (enrolled before the registry kept one) matches only when `soleIssuer`, the one
 * configured issuer, is the token's: with several issuers an equal `sub` at another IdP
 * could be someone else, so it fails closed until the record names its issuer.
 */
export function ownsDevice(record: DeviceRecord, issuer: string, subject: string, soleIssuer: string | undefined): boolean {
  if (record.owner !== subject) return false;
  return record.issuer !== undefined ? record.issuer === issuer : soleIssuer !== undefined && soleIssuer === issuer;
}

/** The id a revoke names, checked: a typo in `ztgw device revoke` must not look like "unknown device". */
export function checkRevokeId(id: unknown): string {
  return checkId(id);
}

/** An id an operation names, checked: a typo must not look like "unknown device". */
export function checkId(id: unknown): string {
  if (!isDeviceId(id)) {
    throw new DeviceValidationError([{ field: 'id', message: `must be a 43-character base64url SHA-256 fingerprint, got ${typeof id === 'string' ? describeId(id) : typeName(id)}` }]);
  }
  return id;
}

export function revokedCopy(record: DeviceRecord, at: Date): DeviceRecord {
  if (record.revokedAt !== undefined) return record;
  return Object.freeze({ ...record, revokedAt: at.toISOString() });
}

/**
 * True when the posture is older than `staleAfterS`: the device has not checked in
 * recently enough for its posture to be believed. An unreadable lastCheckIn is stale.
 */
export function isStale(record: DeviceRecord, now: Date, staleAfterS: number): boolean {
  const checkedIn = Date.parse(record.posture.lastCheckIn);
  if (Number.isNaN(checkedIn)) return true;
  return now.getTime() - checkedIn > staleAfterS * 1000;
}

export function byId(a: DeviceRecord, b: DeviceRecord): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function text(field: string, value: unknown, add: (field: string, message: string) => void, opts: { required: boolean }): void {
  if (typeof value !== 'string') add(field, `expected string, got ${typeName(value)}`);
  else if (opts.required && value.trim() === '') add(field, 'must not be empty');
  else if (value.length > MAX_TEXT) add(field, `must be at most ${MAX_TEXT} characters`);
  else if (CONTROL.test(value)) add(field, 'must not contain control characters');
}

function timestamp(field: string, value: unknown, add: (field: string, message: string) => void): void {
  if (typeof value !== 'string') add(field, `expected an ISO 8601 date-time string, got ${typeName(value)}`);
  else if (!ISO_DATE_TIME.test(value) || Number.isNaN(Date.parse(value))) {
    add(field, `must be an ISO 8601 date-time with a zone, e.g. 2025-01-31T12:00:00Z, got ${JSON.stringify(value.slice(0, 40))}`);
  }
}

function describeId(id: string): string {
  if (id.length !== 43) return `${id.length} characters`;
  if (/[+/=]/.test(id)) return 'base64 with + / or = (use base64url without padding)';
  if (!/^[A-Za-z0-9_-]+$/.test(id)) return 'characters outside base64url';
  return 'a non-canonical encoding (the last character does not end a 32-byte digest)';
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  return Array.isArray(value) ? 'array' : typeof value;
}
