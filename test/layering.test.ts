// Dependencies point down (README.md, "Design"): each folder of src/ sits on a level and
// imports only from lower levels, so the vocabulary at the bottom never reaches up for a
// type and no two folders form a cycle. Imports are read from the source text: TypeScript 7
// ships no compiler API to ask, and an import in this code base is always a one-line
// `from '…'` / `import('…')` with a literal relative path (the checks below fail on
// anything they cannot read, rather than skip it).
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(import.meta.dirname, '../src');

/** Lower number = lower level. A folder may import its own files and any strictly lower level. */
const LEVEL: Readonly<Record<string, number>> = {
  types: 0, // ambient declarations for untyped packages
  core: 0, // vocabulary: domain types, typed errors, diagnostics, paths
  observability: 1, // metrics, logging, the problem mapping
  identity: 2, // libraries: know nothing of the pipeline or config files
  policy: 2,
  upstream: 2,
  limits: 2,
  risk: 2,
  dev: 2, // the demo's echo upstream and issuer
  pipeline: 3, // stages: adapt the libraries to the request context
  config: 4, // load, check, compile → Runtime; reload
  server: 5, // the data-plane listener
  admin: 5, // the admin-plane listener
  '.': 6, // gateway.ts: both listeners and the reload loop
  cli: 7,
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

/** The top folder under src/, or '.' for a file directly in src/. */
function folderOf(file: string): string {
  const parts = relative(SRC, file).split(sep);
  return parts.length === 1 ? '.' : parts[0]!;
}

// from '…' (import and export), import('…'), and side-effect imports.
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)(['"])([^'"]+)\1/gm;

interface Edge {
  readonly from: string;
  readonly to: string;
  readonly fromFolder: string;
  readonly toFolder: string;
}

function importEdges(): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    for (const [, , spec] of readFileSync(file, 'utf8').matchAll(SPECIFIER)) {
      if (!spec!.startsWith('.')) continue; // a package or node: builtin
      const target = resolve(dirname(file), spec!);
      edges.push({ from: relative(SRC, file), to: relative(SRC, target), fromFolder: folderOf(file), toFolder: folderOf(target) });
    }
  }
  return edges;
}

describe('source layering', () => {
  const edges = importEdges();

  it('reads the imports (a broken reader would pass everything)', () => {
    expect(edges.length).toBeGreaterThan(150);
    expect(edges).toContainEqual(expect.objectContaining({ from: join('pipeline', 'route.ts'), to: join('core', 'errors.ts') }));
  });

  it('gives every folder of src/ a level', () => {
    const folders = readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    expect(folders.filter((f) => LEVEL[f] === undefined)).toEqual([]);
  });

  it('imports only from its own folder or a lower level', () => {
    const upward = edges
      .filter((e) => e.fromFolder !== e.toFolder && !(LEVEL[e.toFolder]! < LEVEL[e.fromFolder]!))
      .map((e) => `${e.from} → ${e.to}`);
    expect(upward).toEqual([]);
  });

  it('imports nothing from outside src/', () => {
    const outside = edges.filter((e) => e.to.startsWith('..')).map((e) => `${e.from} → ${e.to}`);
    expect(outside).toEqual([]);
  });
});
