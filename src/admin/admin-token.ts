// The admin plane's credential: one bearer token, from a file or an environment variable,
// read once at start. Only its SHA-256 digest is kept, so the token itself is not in the
// heap a snapshot would hand out (the environment variable, if used, still is: the process
// cannot erase what it was started with).
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { ConfigError, type ConfigIssue } from '../core/diagnostics.ts';
import type { Config } from '../config/schema.ts';
import { formatPath, offsetOf, type YamlPath } from '../core/yaml-path.ts';

/** 32 characters of base64 are 192 bits: out of reach of guessing even without a rate limit. */
export const MIN_ADMIN_TOKEN_LENGTH = 32;

export interface AdminCredential {
  /** Where the token came from, for logs: "tokenFile /etc/ztgw/admin-token" or "tokenEnv ZTGW_ADMIN_TOKEN". */
  readonly source: string;
  /** Does this Authorization header carry the token? Constant time in the token's content. */
  accepts(authorization: string | undefined): boolean;
}

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

// RFC 6750 §2.1: `Bearer` (any case), one or more spaces, the token. Node trims the value.
const BEARER_RE = /^bearer +(\S+)$/i;

function credential(token: string, source: string): AdminCredential {
  const expected = digest(token);
  return Object.freeze({
    source,
    accepts(authorization: string | undefined): boolean {
      const m = authorization === undefined ? null : BEARER_RE.exec(authorization);
      // Both sides hashed: equal lengths for timingSafeEqual, and no early exit on a prefix.
      return m !== null && timingSafeEqual(digest(m[1]!), expected);
    },
  });
}

interface Finding {
  path: YamlPath;
  message: string;
}

const TOKEN_FILE: YamlPath = ['server', 'admin', 'tokenFile'];
const TOKEN_ENV: YamlPath = ['server', 'admin', 'tokenEnv'];
const SET_TOKEN = 'set server.admin.tokenFile or server.admin.tokenEnv';

/** A token is sent in a header: printable ASCII, no spaces, and long enough not to be guessed. */
function tokenProblem(token: string, where: string): string | undefined {
  if (token === '') return `${where} is empty`;
  if (!/^[\x21-\x7e]+$/.test(token)) return `the admin token in ${where} must be printable ASCII without spaces`;
  if (token.length < MIN_ADMIN_TOKEN_LENGTH) {
    return `the admin token in ${where} has ${token.length} characters; at least ${MIN_ADMIN_TOKEN_LENGTH} are needed (e.g. openssl rand -base64 32)`;
  }
  return undefined;
}

function read(config: Config, configDir: string, env: NodeJS.ProcessEnv): { findings: Finding[]; credential?: AdminCredential } {
  const { admin, profiling } = config.server;
  const findings: Finding[] = [];
  if (admin.tokenFile !== undefined && admin.tokenEnv !== undefined) {
    return { findings: [{ path: TOKEN_ENV, message: 'set one of server.admin.tokenFile and server.admin.tokenEnv, not both' }] };
  }
  if (admin.tokenFile === undefined && admin.tokenEnv === undefined) {
    // Fail closed: these settings promise a protected endpoint; without a token there is none.
    if (profiling) findings.push({ path: ['server', 'profiling'], message: `profiling needs the admin token: ${SET_TOKEN}` });
    if (admin.metricsRequireToken) findings.push({ path: ['server', 'admin', 'metricsRequireToken'], message: `needs the admin token: ${SET_TOKEN}` });
    return { findings };
  }
  if (admin.tokenFile !== undefined) {
    const file = resolve(configDir, admin.tokenFile);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      return { findings: [{ path: TOKEN_FILE, message: `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})` }] };
    }
    // Editors and `echo` end a file with a newline; it is not part of the token.
    const token = text.replace(/\r?\n$/, '');
    const problem = tokenProblem(token, file);
    if (problem !== undefined) return { findings: [{ path: TOKEN_FILE, message: problem }] };
    return { findings, credential: credential(token, `tokenFile ${file}`) };
  }
  const name = admin.tokenEnv!;
  const token = env[name];
  if (token === undefined) return { findings: [{ path: TOKEN_ENV, message: `environment variable ${name} is not set` }] };
  const problem = tokenProblem(token, `environment variable ${name}`);
  if (problem !== undefined) return { findings: [{ path: TOKEN_ENV, message: problem }] };
  return { findings, credential: credential(token, `tokenEnv ${name}`) };
}

/** Where a finding points: the config file and, when its text is known, the line of the setting. */
export interface ConfigLocation {
  readonly file: string;
  readonly text?: string;
}

function locate(findings: Finding[], where: ConfigLocation): ConfigIssue[] {
  let position = (_path: YamlPath) => ({ line: 1, col: 1 });
  if (where.text !== undefined) {
    const lineCounter = new LineCounter();
    const doc = parseDocument(where.text, { lineCounter });
    position = (path) => lineCounter.linePos(offsetOf(doc, path, false));
  }
  return findings.map(({ path, message }) => ({ file: where.file, ...position(path), field: formatPath(path), message }));
}

/**
 * The admin credential the config names, or undefined when it names none (then the admin plane
 * has nothing beyond its open endpoints). Throws ConfigError naming the setting when the token
 * cannot be had, is too weak, or a setting that needs it (profiling, metricsRequireToken) is on
 * without one. `env` is the environment the config was read with.
 */
export function loadAdminCredential(config: Config, configDir: string, env: NodeJS.ProcessEnv, where: ConfigLocation): AdminCredential | undefined {
  const { findings, credential } = read(config, configDir, env);
  if (findings.length > 0) throw new ConfigError(locate(findings, where));
  return credential;
}
