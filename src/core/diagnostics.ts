// Diagnostics for files people edit (the gateway config, policy files, device registries,
// policy test files): each problem with its file:line:col and field, so an operator's
// editor jumps to it. One shape for every loader, so the CLI prints them all alike and
// exits 2.
import { LineCounter, parseDocument } from 'yaml';
import { formatPath, offsetOf, type YamlPath } from './yaml-path.ts';

export interface ConfigIssue {
  file: string;
  line: number;
  col: number;
  /** Dotted path such as `routes[0].upstream`; '' for the document itself. */
  field: string;
  message: string;
}

export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG_INVALID';
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[], options?: { cause?: unknown }) {
    super(issues.map(formatIssue).join('\n'), options);
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function formatIssue(i: ConfigIssue): string {
  return `${i.file}:${i.line}:${i.col}: ${i.field ? `${i.field}: ` : ''}${i.message}`;
}

// A config issue found after loading (a file the config names cannot be opened), pointed at
// the setting's line when the config's text is known, else at the top of the file.

export function issueAt(where: { readonly file: string; readonly text?: string }, path: YamlPath, message: string): ConfigIssue {
  let position = { line: 1, col: 1 };
  if (where.text !== undefined) {
    const lineCounter = new LineCounter();
    const doc = parseDocument(where.text, { lineCounter });
    position = lineCounter.linePos(offsetOf(doc, path, false));
  }
  return { file: where.file, ...position, field: formatPath(path), message };
}
