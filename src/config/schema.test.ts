import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import { jsonSchema } from './schema.ts';
import { renderSchema, schemaFile } from './write-schema.ts';

describe('published JSON Schema', () => {
  it('ztgw.schema.json is byte-identical to jsonSchema() (regenerate with src/config/write-schema.ts)', () => {
    const committed = readFileSync(schemaFile, 'utf8');
    expect(JSON.parse(committed)).toEqual(jsonSchema());
    expect(committed).toBe(renderSchema());
  });
});
