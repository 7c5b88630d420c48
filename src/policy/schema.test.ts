import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import { policyJsonSchema } from './schema.ts';
import { policySchemaFile, renderPolicySchema } from './write-schema.ts';

describe('published policy JSON Schema', () => {
  it('policy.schema.json is byte-identical to policyJsonSchema() (regenerate with src/policy/write-schema.ts)', () => {
    const committed = readFileSync(policySchemaFile, 'utf8');
    expect(JSON.parse(committed)).toEqual(policyJsonSchema());
    expect(committed).toBe(renderPolicySchema());
  });
});
