// ztgw: the gateway's command line (its entry is ztgw.ts). Exit codes: 0 ok, 1 runtime
// failure, 2 bad input (invalid config or arguments), so scripts and CI can tell a typo
// from an outage.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
// The gateway, the config loader (its JSON Schema compiles at import) and the policy engine
// are imported by the commands that use them: `token`, `keys`, `device id`, `dpop` and
// `--version` start in a fraction of the time, which the walk-through's many runs feel.
import type { Gateway } from '../gateway.ts';
import { loadOrCreateDevIssuer } from '../dev/issuer.ts';
import { DPOP_USAGE, DpopUsageError, runDpopCommand } from './dpop-client.ts';
import { certThumbprint, DEVICE_ID_USAGE, KEYS_USAGE, KeyFileError, keyThumbprint, KeysUsageError, runDeviceIdCommand, runKeysCommand } from './keys.ts';
import { isAddressInUse, portInUseMessage, type PortOwner } from './ports.ts';
import { lowerPoolPriority, poolNice } from './thread-pool.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
/**
 * The demo's state (dev issuer key, device registry): .ztgw/ in the checkout (git-ignored),
 * or ZTGW_DEMO_DIR, an absolute path deploy/demo.yaml reads too (a test's private copy).
 */
const DEMO_DIR = process.env.ZTGW_DEMO_DIR || resolve(REPO_ROOT, '.ztgw');
const DEV_ISSUER_DIR = resolve(DEMO_DIR, 'dev-issuer');
const DEMO_CONFIG = resolve(REPO_ROOT, 'deploy/demo.yaml');

const USAGE = `usage: ztgw <command> [options]      (ztgw <command> --help for its options)

  serve --config FILE      run the gateway (SIGTERM drains, SIGHUP reloads the config)
  validate --config FILE   check a config file; exit 0 if valid, 2 with file:line:col messages if not
  demo                     run the demo: echo upstream, dev issuer, gateway on 127.0.0.1:8080
  token --sub NAME [--groups a,b] [--dpop-key FILE | --cert FILE]
                           print a development token signed by the demo's dev issuer
  keys generate --out FILE [--alg ES256]
                           write a new private JWK (an assertion signing key or a device key)
  device id --key FILE | --cert FILE
                           print the thumbprint a device is enrolled by
  device enroll|list|revoke|checkin|update --config FILE [options]
                           manage the device registry the config names (ztgw device help)
  dpop curl --key FILE --token TOKEN [-X METHOD] URL
                           send one request with a DPoP-bound token and a fresh proof
  policy validate|test|explain|replay [options]
                           the security team's policy tooling (ztgw policy help)
  model score|eval --traces FILE [options]
                           the anomaly model on request traces (ztgw model help)
  --version                print the version

Exit codes: 0 ok, 1 runtime failure, 2 bad input (invalid config or arguments).
`;

const SERVE_USAGE = `usage: ztgw serve --config FILE

  Run the gateway with the config in FILE. SIGTERM or SIGINT drains in-flight requests and
  exits 0; SIGHUP reloads the config. Exit 2 when the config is invalid, 1 when the gateway
  cannot start (for example a port in use).
`;

const VALIDATE_USAGE = `usage: ztgw validate --config FILE

  Check a config file and everything it names (key files, policies, the admin token).
  Exit 0 when valid; 2 with file:line:col: field: message lines when not.
`;

const DEMO_USAGE = `usage: ztgw demo [--redis]

  Run the demo (deploy/demo.yaml): the echo upstream, the dev issuer and the gateway.
  Ports: ZTGW_PORT (gateway, 8080), ZTGW_ADMIN_PORT (admin plane, 9090), ZTGW_ECHO_PORT
  (echo upstream, 8081). ZTGW_ADMIN_TOKEN chooses the admin token (default: a new one per start).
  Its state (dev issuer key, device registry devices.yaml) is in .ztgw/, or ZTGW_DEMO_DIR
  (an absolute path). Manage the registry with ztgw device … --config deploy/demo.yaml.
  --redis   keep rate-limit counters (route /limited/) in Redis: ZTGW_REDIS_URL, default
            redis://127.0.0.1:6379; without it they are in memory.
`;

const TOKEN_USAGE = `usage: ztgw token --sub NAME [--groups a,b] [--aud AUD] [--ttl SECONDS]
                  [--dpop-key FILE | --cert FILE]

  Print a development token signed by the demo's dev issuer (.ztgw/dev-issuer, or
  \$ZTGW_DEMO_DIR/dev-issuer), valid for --ttl seconds (default 3600), audience zt-gateway
  unless --aud.
  --dpop-key FILE   bind the token to this DPoP key (cnf.jkt): it is then only accepted with
                    a proof signed by the key (ztgw dpop curl). FILE: a JWK or PEM key.
  --cert FILE       bind the token to this client certificate (cnf x5t#S256): it is then only
                    accepted over mTLS with that certificate. FILE: a PEM certificate.
`;

const COMMAND_USAGE: Record<string, string> = {
  serve: SERVE_USAGE,
  validate: VALIDATE_USAGE,
  demo: DEMO_USAGE,
  token: TOKEN_USAGE,
  keys: KEYS_USAGE,
  dpop: DPOP_USAGE,
};

/** A command's usage; device's and policy's live in their modules, loaded only for them. */
async function usageOf(command: string): Promise<string | undefined> {
  if (command === 'device') return (await import('./device.ts')).DEVICE_USAGE;
  if (command === 'policy') return (await import('./policy.ts')).POLICY_USAGE;
  if (command === 'model') return (await import('./model.ts')).MODEL_USAGE;
  return Object.hasOwn(COMMAND_USAGE, command) ? COMMAND_USAGE[command] : undefined;
}

/** A usage mistake: one line, then the usage of the command it was made in, exit 2. */
class UsageError extends Error {
  readonly usage: string | undefined;
  constructor(message: string, usage?: string) {
    super(message);
    this.usage = usage;
  }
}

/** The command being run, so a parse error shows that command's usage, not the overview. */
let currentUsage = USAGE;

/** Which setting moves each port the running command listens on (for EADDRINUSE). */
let portOwners: readonly PortOwner[] = [];

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
  // A ConfigError (config/load.ts), told by its code so this file need not load the loader:
  // its message is its issues, one file:line:col line each.
  if ((err as { code?: unknown } | undefined)?.code === 'ERR_CONFIG_INVALID') {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
  if (err instanceof UsageError || isParseArgsError(err)) {
    process.stderr.write(`ztgw: ${(err as Error).message}\n\n${(err instanceof UsageError && err.usage) || currentUsage}`);
    process.exit(2);
  }
  if (err instanceof KeysUsageError || err instanceof DpopUsageError) {
    process.stderr.write(`ztgw: ${err.message}\n\n${err instanceof KeysUsageError ? KEYS_USAGE : DPOP_USAGE}`);
    process.exit(2);
  }
  if (err instanceof KeyFileError) {
    process.stderr.write(`ztgw: ${err.message}\n`);
    process.exit(2);
  }
  // A port in use is the machine's state, not a bad config: exit 1, and say what moves it.
  const inUse = portInUseMessage(err, portOwners);
  if (inUse !== undefined) {
    process.stderr.write(`ztgw: ${inUse}\n`);
    process.exit(1);
  }
  process.stderr.write(`ztgw: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
}

function configFlag(args: string[]): string {
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { config: { type: 'string', short: 'c' } } });
  if (values.config === undefined) throw new UsageError('--config FILE is required');
  return resolve(values.config);
}

async function validate(args: string[]): Promise<void> {
  const file = configFlag(args);
  const [{ loadConfigFile }, { loadAdminCredential }] = await Promise.all([import('../config/load.ts'), import('../admin/admin-token.ts')]);
  const { config, dir, text } = loadConfigFile(file);
  loadAdminCredential(config, dir, process.env, { file, text }); // serve would refuse a missing or weak admin token
  process.stdout.write(`${file}: ok\n`);
}

/** Runs until SIGTERM/SIGINT (drain, exit 0); SIGHUP reloads the config file. */
function superviseGateway(gateway: Gateway, onStop: () => Promise<void> = async () => {}): void {
  exitOnFatal(gateway.logger);
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

/**
 * An error nothing caught, once the gateway runs: its state is unknown, so there is no drain.
 * The error is a fatal line in the gateway's own log, where the operator looks (pino's fatal()
 * writes its destination out synchronously; process.exit's hook does the decision log), then
 * exit 1. Without this, Node printed the stack to stderr only and the log ended mid-story.
 */
function exitOnFatal(logger: Gateway['logger']): void {
  const die = (what: string) => (err: unknown): void => {
    try {
      logger.fatal({ err }, what);
    } finally {
      process.stderr.write(`ztgw: ${what}, exiting: ${(err as Error | undefined)?.message ?? String(err)} (the fatal log line has the stack)\n`);
      process.exit(1);
    }
  };
  process.on('uncaughtException', die('uncaught exception'));
  process.on('unhandledRejection', die('unhandled rejection'));
}

async function serve(args: string[]): Promise<void> {
  const file = configFlag(args);
  const { startGateway } = await import('../gateway.ts');
  let gateway: Gateway;
  try {
    gateway = await startGateway({ source: { file } });
  } catch (e) {
    if (isAddressInUse(e)) portOwners = await configPortOwners(file);
    throw e;
  }
  superviseGateway(gateway);
}

/** The config's two listeners, read again only to explain a port in use. */
async function configPortOwners(file: string): Promise<PortOwner[]> {
  try {
    const { server } = (await import('../config/load.ts')).loadConfigFile(file).config;
    return [
      { port: server.listen.port, setting: `server.listen.port in ${file}` },
      { port: server.admin.port, setting: `server.admin.port in ${file}` },
    ];
  } catch {
    return [];
  }
}

async function demo(args: string[]): Promise<void> {
  // A typo is an error, not ignored.
  const { values } = parseArgs({ args, strict: true, allowPositionals: false, options: { redis: { type: 'boolean', default: false } } });
  await loadOrCreateDevIssuer(DEV_ISSUER_DIR);
  const echoPort = Number(process.env.ZTGW_ECHO_PORT ?? '8081');
  // The defaults are deploy/demo.yaml's; each variable moves its listener.
  portOwners = [
    { port: Number(process.env.ZTGW_PORT ?? '8080'), setting: 'ZTGW_PORT' },
    { port: Number(process.env.ZTGW_ADMIN_PORT ?? '9090'), setting: 'ZTGW_ADMIN_PORT' },
    { port: echoPort, setting: 'ZTGW_ECHO_PORT' },
  ];
  const [{ startEchoServer }, { startGateway }] = await Promise.all([import('../dev/echo.ts'), import('../gateway.ts')]);
  const echo = await startEchoServer({ host: '127.0.0.1', port: echoPort });
  // Profiling stays on in the demo, behind an admin token: the one given in ZTGW_ADMIN_TOKEN,
  // or a fresh one per start, printed below (deploy/demo.yaml reads it through tokenEnv).
  const givenToken = process.env.ZTGW_ADMIN_TOKEN;
  const adminToken = givenToken ?? randomBytes(32).toString('base64url');
  const env = { ...process.env, ZTGW_ECHO_PORT: String(echo.port), ZTGW_ADMIN_TOKEN: adminToken, ...(values.redis && { ZTGW_LIMITS_STORE: 'redis' }) };
  const gateway = await startGateway({ source: { file: DEMO_CONFIG, env } });
  const shownToken = givenToken === undefined ? adminToken : '$ZTGW_ADMIN_TOKEN';
  process.stderr.write(
    `\nzt-gateway demo\n  gateway  ${gateway.url}   (route /echo/ → echo upstream ${echo.url})\n  admin    ${gateway.adminUrl}   (/healthz /readyz /metrics)\n\n` +
      `  curl -H "Authorization: Bearer $(npm run -s token -- --sub alice --groups eng)" ${gateway.url}/echo/hi\n` +
      `  /code/ and /payroll/ need an enrolled device: README, "Device trust, step by step"\n` +
      `  /limited/ allows 5 requests per 10 s per subject (${values.redis ? 'counted in Redis' : 'in memory; --redis counts them in Redis'}): the 6th gets 429\n\n` +
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
  // `device id` reads a key or certificate file, not the registry: no config needed.
  if (args[0] === 'id') {
    if (asksHelp(args)) return void process.stdout.write(DEVICE_ID_USAGE);
    process.exitCode = await runDeviceIdCommand(args.slice(1), process.stdout, process.stderr);
    return;
  }
  const [{ DEVICE_USAGE, runDeviceCommand }, { loadConfigFile }, { openRegistry }] = await Promise.all([
    import('./device.ts'),
    import('../config/load.ts'),
    import('../config/services.ts'),
  ]);
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
      'dpop-key': { type: 'string' },
      cert: { type: 'string' },
    },
  });
  if (!values.sub) throw new UsageError('--sub NAME is required', TOKEN_USAGE);
  const ttl = Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl <= 0) throw new UsageError('--ttl must be a positive number of seconds', TOKEN_USAGE);
  if (values['dpop-key'] !== undefined && values.cert !== undefined) {
    throw new UsageError('--dpop-key and --cert: a token is bound to one device key, give one', TOKEN_USAGE);
  }
  // RFC 9449 §6.1 / RFC 8705 §3.1: the confirmation claim that binds the token to a key.
  const cnf =
    values['dpop-key'] !== undefined
      ? { jkt: await keyThumbprint(values['dpop-key']) }
      : values.cert !== undefined
        ? { 'x5t#S256': certThumbprint(values.cert) }
        : undefined;
  const issuer = await loadOrCreateDevIssuer(DEV_ISSUER_DIR);
  const groups = values.groups.split(',').filter(Boolean);
  const jwt = await issuer.sign({ groups, ...(cnf !== undefined && { cnf }) }, { sub: values.sub, aud: values.aud, expiresIn: ttl });
  process.stdout.write(`${jwt}\n`);
}

function version(): string {
  const pkg = JSON.parse(readFileSync(resolve(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  const usage = command === undefined ? undefined : await usageOf(command);
  if (usage !== undefined) currentUsage = usage;
  // device and policy answer help themselves: `device id --help` has its own usage.
  if (usage !== undefined && command !== 'device' && asksHelp(args)) return void process.stdout.write(usage);
  switch (command) {
    case 'serve':
      return serve(args);
    case 'validate':
      return validate(args);
    case 'demo':
      return demo(args);
    case 'token':
      return token(args);
    case 'keys':
      return runKeysCommand(args, process.stdout);
    case 'dpop':
      process.exitCode = await runDpopCommand(args, process.stdout, process.stderr);
      return;
    case 'device':
      return device(args);
    case 'policy':
      process.exitCode = await (await import('./policy.ts')).runPolicyCommand(args, process.stdout, process.stderr);
      return;
    case 'model':
      process.exitCode = await (await import('./model.ts')).runModelCommand(args, process.stdout, process.stderr);
      return;
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`ztgw ${version()}\n`);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command "${command}"`, USAGE);
  }
}
