// `ztgw device enroll|list|revoke`: the operator's view of the device registry. Works on
// whichever registry the config names (file or Redis); the caller builds it and passes it
// in. Exit codes follow ztgw: 0 ok, 1 runtime failure (registry unavailable, unknown
// device on revoke), 2 bad input (usage, an invalid id or field, a broken registry file).
import { parseArgs } from 'node:util';
import { ConfigError, formatIssue } from '../config/load.ts';
import {
  DeviceRegistryUnavailableError,
  DeviceValidationError,
  TRUST_LEVELS,
  type DeviceRecord,
  type DeviceRegistry,
  type TrustLevel,
} from '../identity/devices/registry.ts';

export const DEVICE_USAGE = `usage: ztgw device <command> [options]

  enroll --id FP --owner SUB [--managed] [--disk-encrypted] [--os NAME] [--os-version V]
         [--trust low|medium|high] [--label L]
                  enroll (or re-enroll, clearing a revocation) the device whose key has
                  fingerprint FP: the JWK thumbprint of its DPoP key or the x5t#S256 of
                  its client certificate. Trust defaults to low; check-in is now.
  list [--json]   every device, revoked ones included
  revoke --id FP  revoke the device now; it stays listed with its revocation time
`;

class UsageError extends Error {}

export async function runDeviceCommand(
  args: string[],
  registry: DeviceRegistry,
  out: NodeJS.WritableStream,
  /** Where errors go; defaults to `out`. ztgw passes stderr. */
  err: NodeJS.WritableStream = out,
  now: () => Date = () => new Date(),
): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case 'enroll':
        return await enroll(rest, registry, out, err, now);
      case 'list':
        return await list(rest, registry, out);
      case 'revoke':
        return await revoke(rest, registry, out, err, now);
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

async function enroll(args: string[], registry: DeviceRegistry, out: NodeJS.WritableStream, _err: NodeJS.WritableStream, now: () => Date): Promise<number> {
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
    },
  });
  if (values.id === undefined) throw new UsageError('enroll: --id FP is required');
  if (values.owner === undefined) throw new UsageError('enroll: --owner SUB is required');
  if (!TRUST_LEVELS.includes(values.trust as TrustLevel)) {
    throw new UsageError(`enroll: --trust must be one of ${TRUST_LEVELS.join(', ')}, got "${values.trust}"`);
  }
  const record = await registry.enroll({
    id: values.id,
    owner: values.owner,
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
  });
  out.write(`enrolled ${record.id} (owner ${record.owner}, trust ${record.posture.trustLevel})\n`);
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
    label: '--label',
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
