// A config issue found after loading (a file the config names cannot be opened), pointed at
// the setting's line when the config's text is known, else at the top of the file.
import { LineCounter, parseDocument } from 'yaml';
import type { ConfigIssue } from './load.ts';
import { formatPath, offsetOf, type YamlPath } from './yaml-path.ts';

export function issueAt(where: { readonly file: string; readonly text?: string }, path: YamlPath, message: string): ConfigIssue {
  let position = { line: 1, col: 1 };
  if (where.text !== undefined) {
    const lineCounter = new LineCounter();
    const doc = parseDocument(where.text, { lineCounter });
    position = lineCounter.linePos(offsetOf(doc, path, false));
  }
  return { file: where.file, ...position, field: formatPath(path), message };
}
