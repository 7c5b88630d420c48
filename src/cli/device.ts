// `ztgw device enroll|list|revoke|checkin|update`: the operator's (and an MDM job's) view
// of the device registry. Works on whichever registry the config names (file or Redis);
// the caller builds it and passes it in. Exit codes follow ztgw: 0 ok, 1 runtime failure
// (registry unavailable, unknown device on revoke/checkin/update), 2 bad input (usage, an
// invalid id or field, an unknown issuer, a broken registry file).
import { parseArgs } from 'node:util';
import { ConfigError, formatIssue } from '../core/diagnostics.ts';
import {
  DeviceRegistryUnavailableError,
  DeviceValidationError,
  TRUST_LEVELS,
  type DevicePosture,
  type DeviceRecord,
  type DeviceRegistry,
  type TrustLevel,
} from '../identity/devices/registry.ts';

/** A configured issuer as the CLI needs it: the name operators type, the `iss` records keep. */
export interface IssuerRef {
  readonly name: string;
  readonly issuer: string;
}

export const DEVICE_USAGE = `usage: ztgw device <command> [options]

  id --key FILE | --cert FILE
                  print the fingerprint to enroll a device by: the RFC 7638 thumbprint of
                  its DPoP key (a JWK or PEM key file, public or private) or the x5t#S256
                  of its client certificate (PEM). Needs no --config.

  Every other command needs --config FILE: the gateway config whose registry it manages.

  enroll --id FP --owner SUB [--issuer NAME|ISS] [--managed] [--disk-encrypted] [--os NAME]
         [--os-version V] [--trust low|medium|high] [--label L] [--reinstate]
                  enroll (or re-enroll) the device whose key has fingerprint FP: the JWK
                  thumbprint of its DPoP key or the x5t#S256 of its client certificate,
                  owned by SUB at the issuer (its config name or iss; default the only
                  configured issuer). Trust defaults to low; check-in is now. Re-enrolling
                  a revoked device keeps it revoked unless --reinstate is given.
  list [--json]   every device, revoked ones included
  revoke --id FP  revoke the device now; it stays listed with its revocation time
  checkin --id FP [--at ISO]
                  record a check-in (posture.lastCheckIn = now, or ISO): the device is no
                  longer stale. Never clears a revocation.
  update --id FP [--managed|--no-managed] [--disk-encrypted|--no-disk-encrypted]
         [--os NAME] [--os-version V] [--trust low|medium|high] [--label L] [--at ISO]
                  change the posture fields given (an MDM sync) and record a check-in;
                  owner, issuer and revocation are never changed.
`;

class UsageError extends Error {}

/**
 * A fingerprint is base64url, so one in 64 begins with '-', which parseArgs would read as an
 * option (`--id -Xy…` is "ambiguous"): bind the word after --id to it, as `--id=-Xy…` does.
 */
function withIdValuesBound(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--id' && i + 1 < args.length) out.push(`--id=${args[++i]}`);
    else out.push(args[i]!);
  }
  return out;
}

export async function runDeviceCommand(
  args: string[],
  registry: DeviceRegistry,
  out: NodeJS.WritableStream,
  /** Where errors go; defaults to `out`. ztgw passes stderr. */
  err: NodeJS.WritableStream = out,
  now: () => Date = () => new Date(),
  /** The config's issuers: what --issuer may name, and its default when there is one. */
  issuers: readonly IssuerRef[] = [],
): Promise<number> {
  const [command, ...given] = args;
  const rest = withIdValuesBound(given);
  try {
    switch (command) {
      case 'enroll':
        return await enroll(rest, registry, out, err, now, issuers);
      case 'list':
        return await list(rest, registry, out);
      case 'revoke':
        return await revoke(rest, registry, out, err, now);
      case 'checkin':
        return await update(rest, registry, out, err, now, { checkinOnly: true });
      case 'update':
        return await update(rest, registry, out, err, now, { checkinOnly: false });
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        (command === undefined ? err : out).write(DEVICE_USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown device command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || isParseArgsError(e)) {
      err.write(`ztgw device: ${(e as Error).message}\n\n${DEVICE_USAGE}`);
      return 2;
    }
    if (e instanceof DeviceValidationError) {
      for (const i of e.issues) err.write(`ztgw device: ${i.field ? `${flagOf(i.field)}: ` : ''}${i.message}\n`);
      return 2;
    }
    if (e instanceof ConfigError) {
      for (const issue of e.issues) err.write(`${formatIssue(issue)}\n`);
      return 2;
    }
    if (e instanceof DeviceRegistryUnavailableError) {
      err.write(`ztgw device: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

async function enroll(
  args: string[],
  registry: DeviceRegistry,
  out: NodeJS.WritableStream,
  _err: NodeJS.WritableStream,
  now: () => Date,
  issuers: readonly IssuerRef[],
): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      id: { type: 'string' },
      owner: { type: 'string' },
      managed: { type: 'boolean', default: false },
      'disk-encrypted': { type: 'boolean', default: false },
      os: { type: 'string', default: '' },
      'os-version': { type: 'string', default: '' },
      trust: { type: 'string', default: 'low' },
      label: { type: 'string' },
      issuer: { type: 'string' },
      reinstate: { type: 'boolean', default: false },
    },
  });
  if (values.id === undefined) throw new UsageError('enroll: --id FP is required');
  if (values.owner === undefined) throw new UsageError('enroll: --owner SUB is required');
  if (!TRUST_LEVELS.includes(values.trust as TrustLevel)) {
    throw new UsageError(`enroll: --trust must be one of ${TRUST_LEVELS.join(', ')}, got "${values.trust}"`);
  }
  const issuer = ownerIssuer(values.issuer, issuers);
  const record = await registry.enroll({
    id: values.id,
    owner: values.owner,
    ...(issuer !== undefined && { issuer }),
    posture: {
      managed: values.managed,
      diskEncrypted: values['disk-encrypted'],
      os: values.os,
      osVersion: values['os-version'],
      // Enrolment is a check-in: the operator has just looked at the device.
      lastCheckIn: now().toISOString(),
      trustLevel: values.trust as TrustLevel,
    },
    ...(values.label !== undefined && { label: values.label }),
  }, { reinstate: values.reinstate });
  out.write(`enrolled ${record.id} (owner ${record.owner}${issuer === undefined ? '' : ` at ${issuer}`}, trust ${record.posture.trustLevel})\n`);
  if (record.revokedAt !== undefined) {
    out.write(`note: ${record.id} stays revoked (since ${record.revokedAt}); re-enroll with --reinstate to allow it again\n`);
  }
  return 0;
}

/**
 * The `iss` a record keeps for --issuer: a configured issuer's name or its iss, checked
 * against the config so a typo cannot enrol a device nobody can own. Without the flag the
 * only configured issuer; with several, the operator must say which.
 */
function ownerIssuer(given: string | undefined, issuers: readonly IssuerRef[]): string | undefined {
  if (given === undefined) {
    if (issuers.length <= 1) return issuers[0]?.issuer;
    throw new UsageError(`enroll: --issuer is required when several issuers are configured (${issuers.map((i) => i.name).join(', ')})`);
  }
  const found = issuers.find((i) => i.name === given || i.issuer === given);
  if (found === undefined) {
    const known = issuers.length === 0 ? 'none are configured' : `configured: ${issuers.map((i) => `${i.name} (${i.issuer})`).join(', ')}`;
    throw new UsageError(`enroll: --issuer "${given}" is not a configured issuer name or iss; ${known}`);
  }
  return found.issuer;
}

/**
 * `checkin` and `update`: a device reports in (or an MDM sync reports for it) without
 * being re-enrolled, so `devices.staleAfterS` measures silence, not time since enrolment.
 */
async function update(
  args: string[],
  registry: DeviceRegistry,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
  now: () => Date,
  { checkinOnly }: { checkinOnly: boolean },
): Promise<number> {
  const name = checkinOnly ? 'checkin' : 'update';
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    allowNegative: !checkinOnly,
    options: {
      id: { type: 'string' },
      at: { type: 'string' },
      ...(!checkinOnly && {
        managed: { type: 'boolean' },
        'disk-encrypted': { type: 'boolean' },
        os: { type: 'string' },
        'os-version': { type: 'string' },
        trust: { type: 'string' },
        label: { type: 'string' },
      }),
    },
  });
  const v = values as Record<string, string | boolean | undefined>;
  if (v.id === undefined) throw new UsageError(`${name}: --id FP is required`);
  if (v.trust !== undefined && !TRUST_LEVELS.includes(v.trust as TrustLevel)) {
    throw new UsageError(`${name}: --trust must be one of ${TRUST_LEVELS.join(', ')}, got "${v.trust}"`);
  }
  const posture: Partial<DevicePosture> = { lastCheckIn: (v.at as string | undefined) ?? now().toISOString() };
  if (v.managed !== undefined) posture.managed = v.managed as boolean;
  if (v['disk-encrypted'] !== undefined) posture.diskEncrypted = v['disk-encrypted'] as boolean;
  if (v.os !== undefined) posture.os = v.os as string;
  if (v['os-version'] !== undefined) posture.osVersion = v['os-version'] as string;
  if (v.trust !== undefined) posture.trustLevel = v.trust as TrustLevel;
  const record = await registry.update(v.id as string, { posture, ...(v.label !== undefined && { label: v.label as string }) });
  if (record === undefined) {
    err.write(`ztgw device: no device ${v.id} is enrolled\n`);
    return 1;
  }
  out.write(
    checkinOnly
      ? `checked in ${record.id} at ${record.posture.lastCheckIn}\n`
      : `updated ${record.id} (trust ${record.posture.trustLevel}, managed ${yesNo(record.posture.managed)}, disk encrypted ${yesNo(record.posture.diskEncrypted)}, check-in ${record.posture.lastCheckIn})\n`,
  );
  if (record.revokedAt !== undefined) out.write(`note: ${record.id} is revoked (since ${record.revokedAt}) and stays refused\n`);
  return 0;
}

async function list(args: string[], registry: DeviceRegistry, out: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { json: { type: 'boolean', default: false } } });
  const records = await registry.list();
  if (values.json) {
    out.write(`${JSON.stringify(records, null, 2)}\n`);
    return 0;
  }
  if (records.length === 0) {
    out.write('no devices enrolled\n');
    return 0;
  }
  out.write(table(records));
  return 0;
}

async function revoke(args: string[], registry: DeviceRegistry, out: NodeJS.WritableStream, err: NodeJS.WritableStream, now: () => Date): Promise<number> {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { id: { type: 'string' } } });
  if (values.id === undefined) throw new UsageError('revoke: --id FP is required');
  if (!(await registry.revoke(values.id, now()))) {
    err.write(`ztgw device: no device ${values.id} is enrolled\n`);
    return 1;
  }
  const record = await registry.get(values.id);
  out.write(`revoked ${values.id}${record?.revokedAt ? ` at ${record.revokedAt}` : ''}\n`);
  return 0;
}

const COLUMNS: [string, (r: DeviceRecord) => string][] = [
  ['ID', (r) => r.id],
  ['OWNER', (r) => r.owner],
  ['STATUS', (r) => (r.revokedAt === undefined ? 'active' : `revoked ${r.revokedAt}`)],
  ['TRUST', (r) => r.posture.trustLevel],
  ['MANAGED', (r) => yesNo(r.posture.managed)],
  ['DISK ENC', (r) => yesNo(r.posture.diskEncrypted)],
  ['OS', (r) => [r.posture.os, r.posture.osVersion].filter(Boolean).join(' ') || '-'],
  ['LAST CHECK-IN', (r) => r.posture.lastCheckIn],
  ['ENROLLED', (r) => r.enrolledAt],
  ['LABEL', (r) => r.label ?? ''],
];

function table(records: DeviceRecord[]): string {
  const rows = [COLUMNS.map(([h]) => h), ...records.map((r) => COLUMNS.map(([, cell]) => cell(r)))];
  const widths = COLUMNS.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  return rows.map((row) => `${row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()}\n`).join('');
}

function yesNo(b: boolean): string {
  return b ? 'yes' : 'no';
}

/** A record field as the flag that sets it, so the message names what the operator typed. */
function flagOf(field: string): string {
  const flags: Record<string, string> = {
    id: '--id',
    owner: '--owner',
    issuer: '--issuer',
    label: '--label',
    'posture.lastCheckIn': '--at',
    'posture.diskEncrypted': '--disk-encrypted',
    'posture.osVersion': '--os-version',
    'posture.os': '--os',
    'posture.trustLevel': '--trust',
    'posture.managed': '--managed',
  };
  return flags[field] ?? field;
}

function isParseArgsError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}
