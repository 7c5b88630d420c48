// ztgw: the gateway's command line (its entry is ztgw.ts). Exit codes: 0 ok, 1 runtime
// failure, 2 bad input (invalid config or arguments), so scripts and CI can tell a typo
// from an outage.
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, formatIssue, loadConfigFile } from '../config/load.ts';
import { startGateway, type Gateway } from '../gateway.ts';
import { startEchoServer } from '../dev/echo.ts';
import { loadOrCreateDevIssuer } from '../dev/issuer.ts';
import { DEVICE_USAGE, runDeviceCommand } from './device.ts';
import { POLICY_USAGE, runPolicyCommand } from './policy.ts';
import { lowerPoolPriority, poolNice } from './thread-pool.ts';
import { openRegistry } from '../services.ts';
import { loadAdminCredential } from '../observability/admin-token.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
const DEV_ISSUER_DIR = resolve(REPO_ROOT, '.ztgw/dev-issuer');
const DEMO_CONFIG = resolve(REPO_ROOT, 'deploy/demo.yaml');

const USAGE = `usage: ztgw <command> [options]

  serve --config FILE      run the gateway (SIGTERM drains, SIGHUP reloads the config)
  validate --config FILE   check a config file; exit 0 if valid, 2 with file:line:col messages if not
  demo                     run the demo: echo upstream, dev issuer, gateway on 127.0.0.1:8080
  policy validate|test|explain|replay [options]
                           the security team's policy tooling (ztgw policy help)
  device enroll|list|revoke|checkin|update --config FILE [options]
                           manage the device registry the config names (ztgw device help)
  token --sub NAME [--groups a,b] [--aud AUD] [--ttl SECONDS]
                           print a development token signed by the demo's dev issuer
`;

class UsageError extends Error {}

/** node:util parseArgs refusals (unknown option, missing value, stray positional): bad input, exit 2. */
function isParseArgsError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

/**
 * `--help` or `-h` anywhere before `--`: every command prints its usage and exits 0, before
 * it parses or checks anything else (a required --config must not hide the help).
 */
function asksHelp(args: readonly string[]): boolean {
  for (const a of args) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

export function fail(err: unknown): never {
  if (err instanceof ConfigError) {
    for (const issue of err.issues) process.stderr.write(`${formatIssue(issue)}\n`);
    process.exit(2);
  }
  if (err instanceof UsageError || isParseArgsError(err)) {
    process.stderr.write(`ztgw: ${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  process.stderr.write(`ztgw: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
}

function configFlag(args: string[]): string {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { config: { type: 'string', short: 'c' } } });
  if (values.config === undefined) throw new UsageError('--config FILE is required');
  return resolve(values.config);
}

function validate(args: string[]): void {
  const file = configFlag(args);
  const { config, dir, text } = loadConfigFile(file);
  loadAdminCredential(config, dir, process.env, { file, text }); // serve would refuse a missing or weak admin token
  process.stdout.write(`${file}: ok\n`);
}

/** Runs until SIGTERM/SIGINT (drain, exit 0); SIGHUP reloads the config file. */
function superviseGateway(gateway: Gateway, onStop: () => Promise<void> = async () => {}): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    gateway.logger.info({ signal }, 'draining');
    gateway
      .close()
      .then(onStop)
      .then(
        () => process.exit(0),
        (err: unknown) => fail(err),
      );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void gateway.reload());
  const levels = poolNice(process.env); // checked by ztgw.ts before anything started
  lowerPoolPriority(levels, Number(process.env.UV_THREADPOOL_SIZE) || 4).then(
    (threads) => threads > 0 && gateway.logger.info({ threads, niceLevels: levels }, 'thread pool runs below the event loop'),
    (err: unknown) => gateway.logger.warn({ err, niceLevels: levels }, 'could not lower the thread pool priority; it competes with the event loop'),
  );
}

async function serve(args: string[]): Promise<void> {
  const file = configFlag(args);
  superviseGateway(await startGateway({ source: { file } }));
}

async function demo(args: string[]): Promise<void> {
  parseArgs({ args, strict: true, allowPositionals: false, options: {} }); // it takes none: a typo is an error, not ignored
  await loadOrCreateDevIssuer(DEV_ISSUER_DIR);
  const echoPort = Number(process.env.ZTGW_ECHO_PORT ?? '8081');
  const echo = await startEchoServer({ host: '127.0.0.1', port: echoPort });
  // Profiling stays on in the demo, behind an admin token: the one given in ZTGW_ADMIN_TOKEN,
  // or a fresh one per start, printed below (deploy/demo.yaml reads it through tokenEnv).
  const givenToken = process.env.ZTGW_ADMIN_TOKEN;
  const adminToken = givenToken ?? randomBytes(32).toString('base64url');
  const env = { ...process.env, ZTGW_ECHO_PORT: String(echo.port), ZTGW_ADMIN_TOKEN: adminToken };
  const gateway = await startGateway({ source: { file: DEMO_CONFIG, env } });
  const shownToken = givenToken === undefined ? adminToken : '$ZTGW_ADMIN_TOKEN';
  process.stderr.write(
    `\nzt-gateway demo\n  gateway  ${gateway.url}   (route /echo/ → echo upstream ${echo.url})\n  admin    ${gateway.adminUrl}   (/healthz /readyz /metrics)\n\n` +
      `  curl -H "Authorization: Bearer $(npm run -s token -- --sub alice --groups eng)" ${gateway.url}/echo/hi\n\n` +
      `  admin token  ${givenToken === undefined ? `${adminToken}   (new each start; set ZTGW_ADMIN_TOKEN to choose one)` : '(from ZTGW_ADMIN_TOKEN)'}\n` +
      `  curl -o ztgw.cpuprofile -H "Authorization: Bearer ${shownToken}" "${gateway.adminUrl}/debug/profile/cpu?seconds=5"\n\n`,
  );
  superviseGateway(gateway, () => echo.close());
}

/** `--config FILE` may stand anywhere among the device command's own options. */
function takeConfig(args: string[]): { file: string; rest: string[] } {
  const at = args.findIndex((a) => a === '--config' || a === '-c');
  const file = at === -1 ? undefined : args[at + 1];
  if (file === undefined) throw new UsageError('--config FILE is required');
  return { file: resolve(file), rest: [...args.slice(0, at), ...args.slice(at + 2)] };
}

async function device(args: string[]): Promise<void> {
  if (args[0] === 'help' || asksHelp(args)) return void process.stdout.write(DEVICE_USAGE);
  const { file, rest } = takeConfig(args);
  const { config, dir } = loadConfigFile(file);
  const registry = await openRegistry(config, dir);
  try {
    const issuers = config.identity.issuers.map((i) => ({ name: i.name, issuer: i.issuer }));
    process.exitCode = await runDeviceCommand(rest, registry, process.stdout, process.stderr, undefined, issuers);
  } finally {
    await registry.close();
  }
}

async function token(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      sub: { type: 'string' },
      groups: { type: 'string', default: '' },
      aud: { type: 'string', default: 'zt-gateway' },
      ttl: { type: 'string', default: '3600' },
    },
  });
  if (!values.sub) throw new UsageError('--sub NAME is required');
  const ttl = Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl <= 0) throw new UsageError('--ttl must be a positive number of seconds');
  const issuer = await loadOrCreateDevIssuer(DEV_ISSUER_DIR);
  const groups = values.groups.split(',').filter(Boolean);
  const jwt = await issuer.sign({ groups }, { sub: values.sub, aud: values.aud, expiresIn: ttl });
  process.stdout.write(`${jwt}\n`);
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  if (command !== undefined && command !== 'device' && command !== 'policy' && asksHelp(args)) {
    process.stdout.write(USAGE);
    return;
  }
  switch (command) {
    case 'serve':
      return serve(args);
    case 'validate':
      return validate(args);
    case 'demo':
      return demo(args);
    case 'token':
      return token(args);
    case 'device':
      return device(args);
    case 'policy':
      if (asksHelp(args)) return void process.stdout.write(POLICY_USAGE);
      process.exitCode = await runPolicyCommand(args, process.stdout, process.stderr);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

