// Regenerates ztgw.schema.json, the JSON Schema published for editors (YAML language
// servers pick it up from a `$schema:` line or a modeline). schema.test.ts fails when the
// committed file and schema.ts disagree, so run this after every schema change.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { jsonSchema } from './schema.ts';

export const schemaFile = fileURLToPath(new URL('./ztgw.schema.json', import.meta.url));

export function renderSchema(): string {
  return `${JSON.stringify(jsonSchema(), null, 2)}\n`;
}

if (import.meta.main) {
  writeFileSync(schemaFile, renderSchema());
  console.log(`wrote ${schemaFile}`);
}
