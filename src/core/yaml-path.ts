// Where a value sits in a YAML file: the bridge between a path in the parsed data (from a
// schema validator or a semantic check) and a file:line:col a person can open. Shared by
// the gateway config loader and the policy loader.
import { isAlias, isMap, isScalar, isSeq, type Document, type Node } from 'yaml';

export type YamlPath = (string | number)[];

export function keyName(key: unknown): string {
  return String(isScalar(key) ? key.value : key);
}

/**
 * The source offset of the node at `path`, or of its deepest ancestor that exists in the
 * text (a value filled in by a default has no position of its own).
 */
export function offsetOf(doc: Document, path: YamlPath, atKey: boolean): number {
  let node: unknown = doc.contents;
  let offset = start(node) ?? 0;
  for (const [i, segment] of path.entries()) {
    if (isAlias(node)) node = node.resolve(doc);
    let next: unknown;
    if (isMap(node)) {
      const pair = node.items.find((p) => keyName(p.key) === String(segment));
      if (!pair) break;
      const last = i === path.length - 1;
      offset = (last && atKey ? start(pair.key) : start(pair.value)) ?? start(pair.key) ?? offset;
      next = pair.value;
    } else if (isSeq(node) && typeof segment === 'number' && node.items[segment] !== undefined) {
      next = node.items[segment];
      offset = start(next) ?? offset;
    } else break;
    node = next;
  }
  return offset;
}

export const start = (node: unknown): number | undefined => (node as Node | null)?.range?.[0];

/** `routes[0].upstream`, `headers["x-y"]`: how a field is named in messages. */
export function formatPath(path: YamlPath): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(segment)) out += out ? `.${segment}` : segment;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}

/** JSON Pointer (as Ajv reports) → path, with array indices as numbers (found by walking the data). */
export function toPath(pointer: string, data: unknown): YamlPath {
  if (pointer === '') return [];
  const path: YamlPath = [];
  let node = data;
  for (const raw of pointer.slice(1).split('/')) {
    const segment = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    const step = Array.isArray(node) ? Number(segment) : segment;
    path.push(step);
    node = (node as Record<string | number, unknown> | undefined)?.[step];
  }
  return path;
}
