// The policy file's schema: one policy per file, so a file is the unit the security team
// reviews, renames and deletes, and an error's file name says which policy is broken.
// One source of truth, as for the gateway config: the types come from it, load.ts
// validates against it, and policy.schema.json (for editors) is kept identical by
// schema.test.ts (regenerate with `node src/policy/write-schema.ts`).
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const Strict = { additionalProperties: false } as const;

// Names appear in decision logs, metrics labels and CLI output: keep them plain.
const Name = (description: string) => Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]*$', maxLength: 128, description });

const NonEmptyList = <T extends TSchema>(item: T, description: string) => Type.Array(item, { minItems: 1, uniqueItems: true, description });

const AppliesTo = Type.Object(
  {
    routes: Type.Optional(
      NonEmptyList(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' }), 'Route names from the gateway config.'),
    ),
    hosts: Type.Optional(
      NonEmptyList(
        Type.String({ pattern: '^(\\*|(\\*\\.)?[a-z0-9.-]+)$' }),
        'Lower-case host names; "*.example.com" covers any subdomain (not the apex).',
      ),
    ),
    pathPrefixes: Type.Optional(
      NonEmptyList(Type.String({ pattern: '^/' }), 'Segment-aware: "/api" covers "/api" and "/api/x", never "/apix".'),
    ),
    methods: Type.Optional(NonEmptyList(Type.String({ pattern: '^[A-Z]+$' }), 'Upper-case HTTP methods.')),
  },
  {
    ...Strict,
    description:
      'Which requests this policy is evaluated for. Each field present must match (a request matches a field if it matches any item); omit a field, or the whole section, to match everything.',
  },
);

const StepUp = Type.Object(
  {
    acrValues: NonEmptyList(Type.String({ minLength: 1 }), 'Acceptable authentication context classes, in order of preference (RFC 9470 acr_values).'),
    maxAgeS: Type.Optional(Type.Integer({ minimum: 0, description: 'The authentication must be at most this old (RFC 9470 max_age).' })),
  },
  { ...Strict, description: 'What the client must re-authenticate with. Required when effect is step_up.' },
);

const Obligations = Type.Object(
  {
    rateLimitTier: Type.Optional(Type.String({ minLength: 1, description: 'A rate-limit tier defined in the gateway config.' })),
    headers: Type.Optional(
      Type.Record(Type.String({ pattern: '^[a-z0-9-]+$' }), Type.String(), {
        additionalProperties: false,
        description: 'Extra headers sent to the upstream (lower-case names).',
      }),
    ),
    upstream: Type.Optional(Type.String({ minLength: 1, description: 'An alternate upstream defined in the gateway config, e.g. a quarantine service.' })),
  },
  { ...Strict, description: 'What the gateway must do when this rule allows the request. Only allow rules carry obligations.' },
);

const Rule = Type.Object(
  {
    name: Name('Unique within the policy; shown in decision logs.'),
    description: Type.Optional(Type.String()),
    effect: Type.Union([Type.Literal('allow'), Type.Literal('deny'), Type.Literal('step_up')], {
      description: 'deny beats step_up beats allow; a request no rule allows is denied.',
    }),
    when: Type.String({ minLength: 1, description: 'A CEL condition over request, identity, device and risk (see policies/README.md).' }),
    stepUp: Type.Optional(StepUp),
    obligations: Type.Optional(Obligations),
  },
  Strict,
);

export const PolicySchema = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    apiVersion: Type.Literal('zt-gateway/v1'),
    kind: Type.Optional(Type.Literal('Policy')),
    name: Name('Unique across all policy files; shown in decision logs.'),
    description: Type.Optional(Type.String()),
    appliesTo: Type.Optional(AppliesTo),
    mode: Type.Union([Type.Literal('enforce'), Type.Literal('report-only')], {
      default: 'enforce',
      description: 'report-only: evaluated and logged, never changes the outcome (to try a policy on live traffic).',
    }),
    rules: Type.Array(Rule, { minItems: 1 }),
  },
  { ...Strict, $id: 'https://zt-gateway.local/schema/policy.json', title: 'zt-gateway policy' },
);

export type PolicyDocument = Static<typeof PolicySchema>;
export type RuleDocument = Static<typeof Rule>;
export type AppliesToDocument = Static<typeof AppliesTo>;
export type StepUpRequirement = Static<typeof StepUp>;
export type Obligations = Static<typeof Obligations>;
export type Effect = RuleDocument['effect'];
export type Mode = PolicyDocument['mode'];

/** The schema as plain JSON (TypeBox adds symbol keys that JSON drops). */
export function policyJsonSchema(): unknown {
  return JSON.parse(JSON.stringify(PolicySchema));
}
