// The embedded device registry: one YAML (or, by extension, JSON) file
//
//   devices:
//     - id: <43-char fingerprint>
//       owner: alice
//       ...
//
// held in memory as a Map, so `get` on the request path is a lookup and nothing else.
// The file is the source of truth and is meant to be edited by hand or shipped as a
// ConfigMap as well as written by `ztgw device`, so:
// - it is validated like the config file, every problem reported as file:line:col;
// - writes re-read the file, change one entry and replace the file atomically (temp file
//   + rename), so other entries, comments and concurrent hand edits survive, and a
//   reader never sees half a file;
// - with `watch`, a change is picked up within ~50 ms; a broken edit keeps the last good
//   registry in memory (build, swap, keep the old one) and is reported through onError.
// A device checks in (or an MDM sync reports its posture) through `ztgw device
// checkin|update`, or by rewriting the file atomically: the gateway watches it.
// Re-enrolling keeps a revocation unless told to reinstate; an update never touches it.
// Writes are serialised within one process. Two processes writing at the same instant
// can still lose one write (last rename wins); the Redis store is for shared writers.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, watch as fsWatch, type FSWatcher } from 'node:fs';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, Document, type YAMLSeq } from 'yaml';
import { ConfigError, type ConfigIssue } from '../../core/diagnostics.ts';
import {
  applyUpdate,
  byId,
  checkId,
  checkRevokeId,
  DeviceRegistryUnavailableError,
  prepareEnrollment,
  revokedCopy,
  validateDevice,
  type DeviceRecord,
  type DeviceRegistry,
  type DeviceUpdate,
  type EnrollInput,
  type EnrollOptions,
} from './registry.ts';

export interface FileRegistryOptions {
  file: string;
  /** Reload when the file changes (fs.watch on its directory). Default false. */
  watch?: boolean;
  /** A reload failed; the last good registry stays in use. Default: process.emitWarning. */
  onError?(err: Error): void;
  /** A reload changed the registry (not called for this instance's own writes). */
  onReload?(): void;
  /** Clock for default enrolledAt and revokedAt. */
  now?: () => Date;
  /** Quiet period before a reload; editors and renames fire several events per save. Default 50. */
  debounceMs?: number;
}

type Format = 'yaml' | 'json';

/** A parsed, validated file: the records in file order, and the YAML document to edit. */
interface Snapshot {
  text: string | undefined;
  records: DeviceRecord[];
  doc: Document | undefined;
}

const HEADER = ' Device registry for zt-gateway. Managed by `ztgw device enroll|revoke`; hand edits are fine.\n' +
  ' Each id is the device key fingerprint: RFC 7638 JWK thumbprint (DPoP) or x5t#S256 (mTLS).';

/**
 * Loads the registry now (a missing file is an empty registry; a broken one throws a
 * ConfigError with file:line:col) and returns it; `close()` stops the watcher.
 */
export function createFileRegistry(opts: FileRegistryOptions): DeviceRegistry {
  const file = opts.file;
  const path = resolve(file);
  const dir = dirname(path);
  const base = basename(path);
  const format: Format = extname(path).toLowerCase() === '.json' ? 'json' : 'yaml';
  const now = opts.now ?? (() => new Date());
  const onError = opts.onError ?? ((err: Error) => process.emitWarning(err));
  const debounceMs = opts.debounceMs ?? 50;

  let text = readIfExists(path, file);
  let snapshot = parseSnapshot(text, file, format);
  let devices = toMap(snapshot.records);
  let lastBadText: string | undefined;

  // Writes and reloads run one at a time, in order: a reload that read the file before
  // a write renamed it must not land after the write and undo it in memory.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(task: () => Promise<T>): Promise<T> => {
    const run = queue.then(task);
    queue = run.catch(() => {});
    return run;
  };

  const adopt = (next: Snapshot) => {
    snapshot = next;
    text = next.text;
    devices = toMap(next.records);
  };

  async function reload(): Promise<void> {
    if (closed) return;
    let current: string | undefined;
    try {
      current = await readAsyncIfExists(path);
    } catch (err) {
      onError(new Error(`${file}: cannot read device registry (${errorCode(err)}); keeping the last good one`, { cause: err }));
      return;
    }
    if (current === text || (current !== undefined && current === lastBadText)) return;
    try {
      adopt(parseSnapshot(current, file, format));
      lastBadText = undefined;
    } catch (err) {
      lastBadText = current;
      onError(err as Error);
      return;
    }
    opts.onReload?.();
  }

  let watcher: FSWatcher | undefined;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  if (opts.watch) {
    mkdirSync(dir, { recursive: true });
    // The directory, not the file: an atomic replace (ours, an editor's, a ConfigMap's
    // symlink swap) gives the name a new inode, and a watch on the old one goes quiet.
    watcher = fsWatch(dir, { persistent: false }, (_event, name) => {
      if (name !== null && name !== base && name !== '..data') return;
      clearTimeout(timer);
      timer = setTimeout(() => void serial(reload), debounceMs);
    });
    watcher.on('error', (err) => onError(new Error(`${file}: watch failed, registry no longer reloads: ${err.message}`, { cause: err })));
  }

  /** Re-reads the file, applies `change` to its records, writes it back, adopts it. */
  function mutate<T>(change: (records: DeviceRecord[]) => { result: T; index: number | undefined }): Promise<T> {
    return serial(async () => {
      let current: string | undefined;
      try {
        current = await readAsyncIfExists(path);
      } catch (err) {
        throw new DeviceRegistryUnavailableError(`${file}: cannot read device registry (${errorCode(err)})`, { cause: err });
      }
      // A broken file on disk is refused, not overwritten: it is someone's unfinished edit.
      const onDisk = current === text ? snapshot : parseSnapshot(current, file, format);
      const records = [...onDisk.records];
      const { result, index } = change(records);
      if (index === undefined) {
        if (onDisk !== snapshot) adopt(onDisk);
        return result;
      }
      const nextText = render(onDisk, records, index, format);
      try {
        await writeAtomic(path, nextText);
      } catch (err) {
        throw new DeviceRegistryUnavailableError(`${file}: cannot write device registry (${errorCode(err)})`, { cause: err });
      }
      adopt({ text: nextText, records, doc: format === 'yaml' ? parseDocument(nextText) : undefined });
      return result;
    });
  }

  return {
    async get(id) {
      return devices.get(id);
    },
    async list() {
      return [...devices.values()].sort(byId);
    },
    async enroll(input: EnrollInput, options?: EnrollOptions) {
      const fresh = prepareEnrollment(input, now());
      return mutate((records) => {
        const i = records.findIndex((r) => r.id === fresh.id);
        // A revocation survives a re-enrolment unless reinstated (decided on the file as
        // re-read now, so a revoke by hand or by another instance is not lost either).
        const revokedAt = options?.reinstate === true ? undefined : records[i]?.revokedAt;
        const record = revokedAt === undefined ? fresh : Object.freeze({ ...fresh, revokedAt });
        if (i >= 0) records[i] = record;
        else records.push(record);
        return { result: record, index: i >= 0 ? i : records.length - 1 };
      });
    },
    async update(id: string, change: DeviceUpdate) {
      checkId(id);
      return mutate((records) => {
        const i = records.findIndex((r) => r.id === id);
        const found = records[i];
        if (found === undefined) return { result: undefined, index: undefined };
        const record = applyUpdate(found, change);
        records[i] = record;
        return { result: record, index: i };
      });
    },
    async revoke(id, at) {
      checkRevokeId(id);
      const when = at ?? now();
      return mutate((records) => {
        const i = records.findIndex((r) => r.id === id);
        const found = records[i];
        if (found === undefined) return { result: false, index: undefined };
        if (found.revokedAt !== undefined) return { result: true, index: undefined };
        records[i] = revokedCopy(found, when);
        return { result: true, index: i };
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      watcher?.close();
      await queue;
    },
  };
}

// ── parse and validate ──────────────────────────────────────────────────────────────

function parseSnapshot(text: string | undefined, file: string, format: Format): Snapshot {
  if (text === undefined) return { text, records: [], doc: undefined };
  const lineCounter = new LineCounter();
  // uniqueKeys: a second `revokedAt:` or `id:` in one entry must not silently win.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const issue = (offset: number, field: string, message: string): ConfigIssue => ({ file, ...lineCounter.linePos(offset), field, message });
  const fail = (issues: ConfigIssue[]) => new ConfigError(issues.sort((a, b) => a.line - b.line || a.col - b.col));

  let data: unknown;
  if (format === 'json') {
    // JSON.parse has the last word on JSON syntax; YAML (a superset) only supplies
    // positions and catches duplicate keys, which JSON.parse lets the last one win.
    try {
      data = JSON.parse(text);
    } catch (err) {
      const message = (err as Error).message;
      const at = /at position (\d+)/.exec(message);
      throw fail([issue(at ? Number(at[1]) : 0, '', message.replace(/ in JSON at position \d+.*$/, ''))]);
    }
    const duplicates = doc.errors.filter((e) => e.code === 'DUPLICATE_KEY');
    if (duplicates.length > 0) throw fail(duplicates.map((e) => issue(e.pos[0], '', e.message)));
  } else {
    // As in config/load.ts: after a syntax error yaml calls the rest unexpected, so only
    // the first error (and independent duplicate keys) is worth reading.
    const syntax = [...doc.errors.filter((e, i) => i === 0 || e.code === 'DUPLICATE_KEY'), ...doc.warnings];
    if (syntax.length > 0) throw fail(syntax.map((e) => issue(e.pos[0], '', e.message)));
    try {
      data = doc.toJS();
    } catch (err) {
      throw new ConfigError([issue(0, '', err instanceof Error ? err.message : String(err))], { cause: err });
    }
  }
  const positioned = format === 'yaml' || doc.errors.length === 0;
  const offsetOf = (path: (string | number)[], atKey = false) => (positioned ? offsetIn(doc, path, atKey) : 0);

  if (data === null || data === undefined) return { text, records: [], doc: format === 'yaml' ? doc : undefined };
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw fail([issue(0, '', 'expected a map with a "devices" list, e.g. "devices: []"')]);
  }
  const issues: ConfigIssue[] = [];
  for (const key of Object.keys(data)) {
    if (key !== 'devices') issues.push(issue(offsetOf([key], true), key, `unknown field "${key}" (expected only "devices")`));
  }
  const list = (data as { devices?: unknown }).devices;
  const records: DeviceRecord[] = [];
  if (list !== undefined && list !== null && !Array.isArray(list)) {
    issues.push(issue(offsetOf(['devices']), 'devices', 'expected a list of devices'));
  } else if (Array.isArray(list)) {
    const seen = new Map<string, number>();
    list.forEach((entry, i) => {
      const result = validateDevice(entry);
      if (!result.ok) {
        for (const { field, message, unknown } of result.issues) {
          const path = ['devices', i, ...(field ? field.split('.') : [])];
          issues.push(issue(offsetOf(path, unknown), `devices[${i}]${field ? `.${field}` : ''}`, message));
        }
        return;
      }
      const first = seen.get(result.record.id);
      if (first !== undefined) {
        issues.push(issue(offsetOf(['devices', i, 'id']), `devices[${i}].id`, `duplicate id, already enrolled by devices[${first}]`));
        return;
      }
      seen.set(result.record.id, i);
      records.push(result.record);
    });
  }
  if (issues.length > 0) throw fail(issues);
  return { text, records, doc: format === 'yaml' ? doc : undefined };
}

/**
 * Offset of the node at `path` (of its key with `atKey`: an unknown field is named by
 * its key), or of its deepest ancestor present in the text.
 */
function offsetIn(doc: Document, path: (string | number)[], atKey: boolean): number {
  if (atKey && path.length > 0) {
    const parent: unknown = path.length === 1 ? doc.contents : doc.getIn(path.slice(0, -1), true);
    const last = String(path[path.length - 1]);
    const pair = isMap(parent) ? parent.items.find((p) => isScalar(p.key) && String(p.key.value) === last) : undefined;
    if (isNode(pair?.key) && pair.key.range) return pair.key.range[0];
  }
  for (let n = path.length; n > 0; n--) {
    const node: unknown = doc.getIn(path.slice(0, n), true);
    if (isNode(node) && node.range) return node.range[0];
  }
  return isNode(doc.contents) && doc.contents.range ? doc.contents.range[0] : 0;
}

function toMap(records: DeviceRecord[]): Map<string, DeviceRecord> {
  return new Map(records.map((r) => [r.id, r]));
}

// ── write ───────────────────────────────────────────────────────────────────────────

/** Key order for people reading the file: who and what first, posture last. */
function plain(r: DeviceRecord): Record<string, unknown> {
  return {
    id: r.id,
    owner: r.owner,
    ...(r.issuer !== undefined && { issuer: r.issuer }),
    ...(r.label !== undefined && { label: r.label }),
    enrolledAt: r.enrolledAt,
    ...(r.revokedAt !== undefined && { revokedAt: r.revokedAt }),
    posture: { ...r.posture },
  };
}

/**
 * The new file text. YAML edits the document in place, replacing only the changed
 * entry, so comments and the other entries stay as they were written.
 */
function render(before: Snapshot, records: DeviceRecord[], index: number, format: Format): string {
  if (format === 'json') return `${JSON.stringify({ devices: records.map(plain) }, null, 2)}\n`;
  const doc = before.doc;
  const changed = records[index] as DeviceRecord;
  const seq = doc && isMap(doc.contents) ? doc.contents.get('devices', true) : undefined;
  if (doc && isMap(doc.contents) && isSeq(seq)) {
    const node = doc.createNode(plain(changed));
    const items = (seq as YAMLSeq).items;
    const old = items[index];
    if (index < items.length && isNode(old)) {
      node.commentBefore = old.commentBefore;
      items[index] = node;
    } else items.push(node);
    // A block list stays a block list even if the file started as `devices: []`.
    seq.flow = false;
    return doc.toString();
  }
  if (doc && isMap(doc.contents)) {
    doc.contents.set('devices', doc.createNode(records.map(plain)));
    return doc.toString();
  }
  const fresh = new Document({ devices: records.map(plain) });
  fresh.commentBefore = doc?.commentBefore ?? HEADER;
  return fresh.toString();
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  // Same directory, so rename is atomic (same filesystem); dot-prefixed, so the watcher
  // (which filters by name) and humans listing the directory pass over it.
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const mode = await stat(path).then(
    (s) => s.mode & 0o777,
    () => 0o644,
  );
  const fh = await open(tmp, 'wx', mode);
  try {
    try {
      await fh.writeFile(text, 'utf8');
      await fh.chmod(mode); // open's mode is masked by the umask; keep the file's own
      await fh.sync(); // the rename must not reach the disk before the bytes do
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

function readIfExists(path: string, file: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw new ConfigError([{ file, line: 1, col: 1, field: '', message: `cannot read device registry (${errorCode(err)})` }], { cause: err });
  }
}

async function readAsyncIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}
