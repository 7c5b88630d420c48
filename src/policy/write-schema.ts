// Regenerates policy.schema.json, the JSON Schema published for editors (a `$schema:` line
// in a policy file lets YAML language servers complete and check it). schema.test.ts fails
// when the committed file and schema.ts disagree, so run this after every schema change.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { policyJsonSchema } from './schema.ts';

export const policySchemaFile = fileURLToPath(new URL('./policy.schema.json', import.meta.url));

export function renderPolicySchema(): string {
  return `${JSON.stringify(policyJsonSchema(), null, 2)}\n`;
}

if (import.meta.main) {
  writeFileSync(policySchemaFile, renderPolicySchema());
  console.log(`wrote ${policySchemaFile}`);
}
