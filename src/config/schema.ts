// The configuration file's schema. One source of truth: the TypeScript types are derived
// from it, the loader validates against it, and `ztgw schema` / the test in schema.test.ts
// keep the published JSON Schema (ztgw.schema.json, for editors) identical to it.
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const Strict = { additionalProperties: false } as const;

/** A DNS name or IPv4 address, "*." allowed in front; no port, no trailing dot (semantics.ts explains a refusal). */
const HOST_NAME_PATTERN = '^(\\*\\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^\\[[0-9A-Fa-f:.]+\\]$';

/** Headers whose effect reaches past one route to the whole host; see RouteResponse.ownHostHeaders. */
export const HOST_WIDE_HEADER_GROUPS = ['strict-transport-security', 'cors', 'alt-svc', 'clear-site-data', 'reporting', 'service-worker-allowed'] as const;

/** A period: "10s", "1m", "1h". */
const PERIOD_PATTERN = '^[1-9][0-9]{0,5}(s|m|h)$';
const TIER_NAME = Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' });
const UPSTREAM_URL = Type.String({ format: 'uri', pattern: '^https?://' });

const HeaderName = Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$' });

const RouteResponse = Type.Object(
  {
    banners: Type.Union([Type.Literal('strip'), Type.Literal('pass')], {
      default: 'strip',
      description: 'strip: remove Server, X-Powered-By and similar banner headers (server.bannerHeaders) from this route\'s responses. pass: keep them.',
    }),
    errorBodies: Type.Union([Type.Literal('replace'), Type.Literal('pass')], {
      default: 'replace',
      description: 'replace: a 5xx from the upstream reaches the client as the gateway\'s problem document (ERR_UPSTREAM_ERROR) with the upstream\'s status. pass: the upstream\'s own body.',
    }),
    redirects: Type.Union([Type.Literal('rewrite'), Type.Literal('pass')], {
      default: 'rewrite',
      description: 'rewrite: Location and Content-Location naming the upstream\'s own origin (or its path, under stripPrefix) are rewritten to the public origin and route prefix, like nginx\'s proxy_redirect default. pass: unchanged.',
    }),
    cookies: Type.Union([Type.Literal('scoped'), Type.Literal('pass')], {
      default: 'scoped',
      description: 'scoped: Set-Cookie is confined to this route (name prefixed with "<route>.", Path under pathPrefix, Domain dropped unless cookieDomain), and the Cookie header sent upstream carries only this route\'s cookies, names restored. pass: cookies cross unchanged in both directions.',
    }),
    cookieDomain: Type.Optional(
      Type.String({ pattern: HOST_NAME_PATTERN, description: 'Domain attribute this route\'s cookies may keep (the upstream\'s Domain is kept only when it is this name or under it).' }),
    ),
    ownHostHeaders: Type.Array(Type.Union(HOST_WIDE_HEADER_GROUPS.map((g) => Type.Literal(g))), {
      default: [],
      uniqueItems: true,
      description:
        'Host-wide headers this route\'s upstream may set: strict-transport-security, cors (Access-Control-*), alt-svc, clear-site-data, reporting (NEL, Report-To, Reporting-Endpoints), service-worker-allowed. From other routes they are dropped.',
    }),
    setHeaders: Type.Record(HeaderName, Type.String({ pattern: '^[\\t\\x20-\\x7e\\x80-\\xff]*$' }), {
      default: {},
      description: 'Headers the gateway sets on this route\'s responses (replacing the upstream\'s), e.g. strict-transport-security or content-security-policy. Not framing or hop-by-hop headers (content-length, transfer-encoding, connection…) nor x-request-id.',
    }),
  },
  { ...Strict, default: {}, description: 'What this route\'s upstream may send back to clients.' },
);

const Milliseconds = (def: number, description: string) =>
  Type.Integer({ minimum: 1, maximum: 3_600_000, default: def, description });

const Listener = (host: string, port: number, description: string) =>
  Type.Object(
    {
      host: Type.String({ minLength: 1, default: host, description: 'Address to bind.' }),
      port: Type.Integer({ minimum: 0, maximum: 65535, default: port, description: 'TCP port; 0 picks a free one.' }),
    },
    { ...Strict, default: {}, description },
  );

const Server = Type.Object(
  {
    listen: Listener('127.0.0.1', 8080, 'Data plane: where employees connect.'),
    admin: Type.Object(
      {
        host: Type.String({ minLength: 1, default: '127.0.0.1', description: 'Address to bind.' }),
        port: Type.Integer({ minimum: 0, maximum: 65535, default: 9090, description: 'TCP port; 0 picks a free one.' }),
        hosts: Type.Array(Type.String({ pattern: HOST_NAME_PATTERN }), {
          default: [],
          description:
            'Host names the admin plane answers (Host header, port ignored), e.g. the name Prometheus scrapes it by. Always answered: the address the request came in on, and localhost names on a loopback listener. Any other Host gets 421, so a DNS-rebinding web page cannot reach it.',
        }),
        tokenFile: Type.Optional(
          Type.String({ minLength: 1, description: 'File holding the admin bearer token (at least 32 characters), relative to this file.' }),
        ),
        tokenEnv: Type.Optional(
          Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'Environment variable holding the admin bearer token (at least 32 characters).' }),
        ),
        metricsRequireToken: Type.Boolean({ default: false, description: 'Serve /metrics only with the admin token too.' }),
      },
      {
        ...Strict,
        default: {},
        description:
          'Admin plane: /healthz, /readyz, /metrics and /.well-known/zt-jwks.json open (Host and Origin checked); everything else (profiles, heap snapshots) only with the admin token, and off without one. Keep it off public interfaces.',
      },
    ),
    trustedProxies: Type.Array(Type.String({ minLength: 1 }), {
      default: [],
      description:
        'Peers (IPs or CIDRs, or "loopback", "linklocal", "uniquelocal") whose X-Forwarded-* and X-Request-Id headers are believed. Everyone else has them replaced.',
    }),
    limits: Type.Object(
      {
        maxBodyBytes: Type.Integer({ minimum: 0, default: 10 * 1024 * 1024, description: 'Largest request body; larger gets 413.' }),
        maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024, default: 16 * 1024, description: 'Largest request head (Node maxHeaderSize); larger gets 431.' }),
      },
      { ...Strict, default: {} },
    ),
    timeouts: Type.Object(
      {
        requestMs: Milliseconds(60_000, 'Whole request, client to gateway (Node requestTimeout).'),
        headersMs: Milliseconds(10_000, 'Time for a client to send its request head (slowloris guard).'),
        keepAliveMs: Milliseconds(5_000, 'Idle keep-alive time for client connections.'),
        upstreamMs: Milliseconds(30_000, 'Default time to wait for an upstream, per route overridable.'),
        sendIdleMs: Milliseconds(
          30_000,
          'A response whose client has not drained its connection for this long (it stopped reading) is ended, its upstream request aborted and its bulkhead and fair-share slots returned (access line: 408 ERR_REQUEST_TIMEOUT). A slow reader that makes progress is never cut.',
        ),
        bodyIdleMs: Milliseconds(
          10_000,
          'A request body from which no byte arrives for this long (a stalled upload) is refused with 408 ERR_REQUEST_TIMEOUT and its upstream request aborted, returning its upstream slots.',
        ),
        shutdownMs: Milliseconds(10_000, 'On SIGTERM, how long in-flight requests may take before the process exits.'),
      },
      { ...Strict, default: {} },
    ),
    logLevel: Type.Union(
      ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
      { default: 'info' },
    ),
    tls: Type.Optional(
      Type.Object(
        {
          certFile: Type.String({ minLength: 1, description: 'PEM certificate chain of the data plane.' }),
          keyFile: Type.String({ minLength: 1, description: 'PEM private key of the data plane.' }),
          clientCaFile: Type.Optional(
            Type.String({
              minLength: 1,
              description: 'Device CA (PEM). When set, clients are asked for a certificate signed by it (mTLS, RFC 8705).',
            }),
          ),
        },
        { ...Strict, description: 'Terminate TLS on the data plane. Paths are relative to this file.' },
      ),
    ),
    stripHeaders: Type.Array(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$' }), {
      default: [],
      description:
        'Extra request headers never forwarded upstream nor shown to policies, on top of the built-in deny list (src/upstream/header-deny-list.ts: identity headers of access proxies, client-certificate, client-IP, original-URL, forwarding and method-override headers, x-zt-*, x-user*).',
    }),
    publicOrigins: Type.Array(Type.String({ pattern: '^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@]+$' }), {
      default: [],
      description:
        'Origins clients reach this gateway by, e.g. "https://gw.example.com" or "http://127.0.0.1:8080". A request whose Host (or a trusted proxy\'s X-Forwarded-Host/-Proto) names another origin, and no route\'s hosts, gets 421. The matched origin is sent upstream as X-Forwarded-Host and is what DPoP proofs (htu) are checked against. Empty: only the address and port the client actually connected to (and localhost names on a loopback listener).',
    }),
    headersWithUnderscores: Type.Union([Type.Literal('drop'), Type.Literal('reject')], {
      default: 'drop',
      description:
        'Request header names with "_" (CGI, WSGI, Rack and PHP-FPM read them as "-"): drop them (neither forwarded nor shown to policies) or refuse the request with 400. Like Envoy\'s headers_with_underscores_action.',
    }),
    bannerHeaders: Type.Array(HeaderName, {
      default: ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-runtime', 'x-version', 'x-generator', 'x-backend-server', 'x-served-by', 'via'],
      description: 'Response headers that announce the upstream\'s software or hosts, removed from every route whose response.banners is strip (the default).',
    }),
    profiling: Type.Boolean({
      default: false,
      description:
        'Expose /debug/profile/cpu and /debug/profile/heap on the admin plane, behind the admin token (admin.tokenFile or admin.tokenEnv, required). A heap snapshot holds every secret in memory and stalls the data plane while it is taken.',
    }),
  },
  { ...Strict, default: {} },
);

const Algorithm = Type.Union(
  ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519', 'HS256', 'HS384', 'HS512'].map((a) =>
    Type.Literal(a),
  ),
  { description: 'A JWS algorithm. "none" is never accepted.' },
);

const Issuer = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$', description: 'Short name used in logs and by routes.' }),
    issuer: Type.String({ minLength: 1, description: 'Expected "iss" claim, exactly.' }),
    audiences: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Accepted "aud" values; a token must carry one.' }),
    algorithms: Type.Array(Algorithm, { minItems: 1, uniqueItems: true }),
    jwksUrl: Type.Optional(Type.String({ format: 'uri', description: 'Remote JWKS; cached, refetched on an unknown kid.' })),
    jwksFile: Type.Optional(Type.String({ minLength: 1, description: 'Local JWKS file, relative to this config file.' })),
    secret: Type.Optional(Type.String({ minLength: 32, description: 'Shared secret for HS* algorithms (use ${ENV} for it).' })),
    clockToleranceS: Type.Integer({
      minimum: 0,
      maximum: 300,
      default: 30,
      description: 'Clock skew allowed on nbf, iat and auth_time. exp is honoured to the second (the identity assertion never outlives the token).',
    }),
    groupsClaim: Type.String({ minLength: 1, default: 'groups', description: 'Claim holding the groups: an array of strings or one space-separated string.' }),
    maxTokenLifetimeS: Type.Integer({
      minimum: 1,
      default: 86_400,
      description: 'Longest token lifetime accepted from this issuer: exp - iat, or exp - now when the token has no iat.',
    }),
    jwksCacheMaxAgeS: Type.Integer({ minimum: 1, default: 600, description: 'Refetch the JWKS at least this often.' }),
    jwksCooldownS: Type.Integer({ minimum: 0, default: 30, description: 'Least time between refetches caused by unknown kids.' }),
    jwksTimeoutMs: Type.Integer({ minimum: 1, default: 5000 }),
  },
  Strict,
);

const AsymmetricAlgorithm = Type.Union(
  ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'].map((a) => Type.Literal(a)),
);

const Dpop = Type.Object(
  {
    algorithms: Type.Array(AsymmetricAlgorithm, {
      minItems: 1,
      uniqueItems: true,
      default: ['ES256', 'ES384', 'EdDSA', 'Ed25519', 'RS256', 'PS256'],
      description: 'Proof algorithms accepted (RFC 9449 §4.3: asymmetric only).',
    }),
    maxAgeS: Type.Integer({ minimum: 1, maximum: 600, default: 60, description: 'How old a proof\'s iat may be.' }),
    futureSkewS: Type.Integer({ minimum: 0, maximum: 60, default: 5, description: 'How far in the future a proof\'s iat may be.' }),
    nonce: Type.Optional(
      Type.Object(
        {
          secret: Type.String({ minLength: 32, description: 'HMAC key for stateless server nonces; the same on every instance.' }),
          windowS: Type.Integer({ minimum: 10, maximum: 3600, default: 300 }),
        },
        { ...Strict, description: 'Require server-issued nonces in proofs (RFC 9449 §8).' },
      ),
    ),
    replayCacheMaxEntries: Type.Integer({
      minimum: 1000,
      default: 1_000_000,
      description: 'In-memory jti cache size (without Redis). When every entry is live, new proofs are refused (503), never a live jti forgotten.',
    }),
    replayCacheKeyShare: Type.Number({
      exclusiveMinimum: 0,
      maximum: 1,
      default: 0.1,
      description:
        'Fraction of replayCacheMaxEntries one DPoP key (jkt) may hold; over it that key\'s new proofs are refused (503) while other keys go on. 0.1 of 1 000 000 lets one key make ~1 500 proofs/s over the default 66 s window.',
    }),
  },
  { ...Strict, default: {} },
);

const Identity = Type.Object(
  {
    issuers: Type.Array(Issuer, { default: [] }),
    dpop: Dpop,
    tokenCache: Type.Object(
      {
        maxEntries: Type.Integer({ minimum: 0, default: 10_000, description: '0 turns the verified-token cache off.' }),
        maxTtlS: Type.Integer({ minimum: 1, default: 300, description: 'A cached verification is redone at least this often.' }),
      },
      { ...Strict, default: {} },
    ),
  },
  { ...Strict, default: {} },
);

const Route = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' }),
    hosts: Type.Optional(
      Type.Array(Type.String({ pattern: HOST_NAME_PATTERN }), {
        minItems: 1,
        description: 'Host names this route answers ("*.example.com" allowed; no port, no trailing dot). Omit for any host.',
      }),
    ),
    pathPrefix: Type.String({ pattern: '^/', description: 'Longest matching prefix wins. "/api/" matches "/api/x" and "/api".' }),
    upstream: Type.String({
      pattern: '^(https?://.+|[a-z0-9][a-z0-9_-]*)$',
      description: 'Base URL (one endpoint; its path is prepended to the forwarded path), or the name of an entry in upstreams.',
    }),
    limits: Type.Array(TIER_NAME, { default: [], uniqueItems: true, description: 'Rate-limit tiers (limits.tiers) every request of this route is checked against.' }),
    rateLimiting: Type.Boolean({ default: true, description: 'Off: neither this route\'s tiers nor a policy\'s rateLimitTier apply here.' }),
    circuitBreaker: Type.Boolean({ default: true, description: 'Off: requests of this route pass breakers by (their outcomes are not counted).' }),
    stripPrefix: Type.Boolean({ default: false, description: 'Remove pathPrefix before forwarding.' }),
    caseInsensitive: Type.Boolean({
      default: false,
      description:
        'The upstream treats paths case-insensitively (Express by default, ASP.NET, IIS): match pathPrefix ignoring case and give policies the path in lower case, so "/API/Admin" cannot slip past a rule about "/api/admin". Off: a path that differs from a route prefix only in case is refused (400).',
    }),
    public: Type.Boolean({ default: false, description: 'Skip authentication. Off unless said explicitly.' }),
    issuers: Type.Optional(Type.Array(Type.String(), { minItems: 1, description: 'Issuer names accepted here; default all.' })),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
    websocket: Type.Boolean({ default: false, description: 'Allow WebSocket upgrades (after authentication).' }),
    device: Type.Object(
      {
        binding: Type.Union([Type.Literal('required'), Type.Literal('optional'), Type.Literal('off')], {
          default: 'optional',
          description:
            'required: the token must be bound to a device key (DPoP cnf.jkt or mTLS cnf.x5t#S256) and proven. optional: unbound tokens pass. off: no device lookup. A bound token always needs its proof.',
        }),
        requireEnrolled: Type.Boolean({
          default: false,
          description: 'Refuse unless the device is enrolled, not revoked, not stale, and owned by the token subject.',
        }),
      },
      { ...Strict, default: {} },
    ),
    forwardAuthorization: Type.Boolean({
      default: false,
      description: 'Forward the client\'s Authorization and DPoP headers upstream (off: the assertion is what upstreams trust).',
    }),
    response: RouteResponse,
    forwardHeaders: Type.Array(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^`|~-]+$' }), {
      default: [],
      description:
        'Client request headers this route forwards (and shows to policies) although the built-in deny list or server.stripHeaders names them, e.g. x-forwarded-prefix for an upstream that trusts only this gateway. Not the gateway\'s own (X-Forwarded-For/-Proto/-Host, X-Request-Id, the assertion header) nor hop-by-hop ones.',
    }),
  },
  Strict,
);

const LimitTier = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 1_000_000_000, description: 'Requests per period, sustained.' }),
    per: Type.String({ pattern: PERIOD_PATTERN, description: 'The period: "10s", "1m", "1h".' }),
    burst: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 1_000_000_000, description: 'Requests allowed at once from idle (GCRA capacity). Default: limit.' }),
    ),
    key: Type.Array(Type.String({ pattern: '^(subject|device|route|ip|claim:[A-Za-z0-9_.-]{1,64})$' }), {
      minItems: 1,
      uniqueItems: true,
      default: ['subject'],
      description: 'What one bucket counts: any of subject, device, route, ip (the client IP, trusted-proxy aware), claim:<name>. A value the request lacks (no subject on a public route) is one shared bucket.',
    }),
    onStoreFailure: Type.Union([Type.Literal('allow'), Type.Literal('deny'), Type.Literal('local')], {
      default: 'local',
      description: 'When the Redis store fails or times out: allow (fail open), deny (503), local (an in-process limit at limit / limits.expectedInstances).',
    }),
  },
  Strict,
);

const Limits = Type.Object(
  {
    store: Type.Optional(
      Type.Union([Type.Literal('memory'), Type.Literal('redis')], {
        description: 'Where counters live. Default: redis when limits.redis or the redis section is set, else memory (per instance).',
      }),
    ),
    redis: Type.Optional(
      Type.Object(
        {
          url: Type.Optional(Type.String({ pattern: '^rediss?://', description: 'A Redis of its own for limits (default: the redis section\'s).' })),
          cluster: Type.Optional(
            Type.Array(Type.String({ pattern: '^rediss?://' }), { minItems: 1, description: 'Seed nodes of a Redis Cluster (ioredis Cluster); keys are hash-tagged so one check lands on one slot.' }),
          ),
        },
        Strict,
      ),
    ),
    timeoutMs: Type.Integer({ minimum: 1, maximum: 5000, default: 50, description: 'A store answer slower than this is a store failure (onStoreFailure decides).' }),
    expectedInstances: Type.Integer({ minimum: 1, maximum: 10_000, default: 1, description: 'Gateways sharing the store: the local fallback allows limit / this.' }),
    keyPrefix: Type.String({ minLength: 1, maxLength: 64, default: 'ztgw:rl:' }),
    maxLocalKeys: Type.Integer({ minimum: 100, maximum: 10_000_000, default: 100_000, description: 'Buckets the in-memory store keeps (least recently used go first; an idle bucket is a full one).' }),
    tiers: Type.Record(TIER_NAME, LimitTier, { default: {}, description: 'Named limits that routes (routes[].limits) and policies (obligations.rateLimitTier) apply.' }),
  },
  { ...Strict, default: {}, description: 'Rate limits (GCRA): tiers, and where their counters live.' },
);

// Inside a union (an upstream is a URL or this object) Ajv fills no defaults, so every field
// here is optional and config/upstreams.ts applies the defaults the descriptions state.
const Breaker = Type.Object(
  {
    enabled: Type.Optional(Type.Boolean({ description: 'One circuit breaker per endpoint. Default: true.' })),
    errorThresholdPercentage: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 100, description: 'Opens when failures (connection errors, timeouts, 5xx) exceed this share of the window. Default: 50.' }),
    ),
    volumeThreshold: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000, description: '…and the window holds at least this many requests. Default: 20.' })),
    rollingCountTimeoutMs: Type.Optional(Type.Integer({ minimum: 100, maximum: 600_000, description: 'The window. Default: 10000.' })),
    rollingCountBuckets: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'Default: 10.' })),
    resetTimeoutMs: Type.Optional(
      Type.Integer({ minimum: 100, maximum: 3_600_000, description: 'Time open before one probe request is let through (half-open). Default: 10000.' }),
    ),
  },
  Strict,
);

const UpstreamObject = Type.Object(
  {
    endpoints: Type.Array(
      Type.Object(
        {
          name: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' }),
          url: UPSTREAM_URL,
          priority: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 100,
              description: 'Lower is preferred (the local region 0, the central one 1): traffic fails over to the next priority when every endpoint of this one is out. Default: 0.',
            }),
          ),
        },
        Strict,
      ),
      { minItems: 1, maxItems: 64 },
    ),
    maxInFlight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000, description: 'Bulkhead: requests in flight to this upstream; beyond it 503 at once. Default: 1024.' })),
    maxInFlightPerPrincipal: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1_000_000,
        description: 'Fair share: requests in flight per principal (subject + device); beyond it 429 at once, so one client cannot hold every connection. Default: 64.',
      }),
    ),
    breaker: Type.Optional(Breaker),
    retry: Type.Optional(
      Type.Object(
        {
          attempts: Type.Optional(Type.Integer({ minimum: 0, maximum: 5, description: 'Retries of idempotent requests without a body, on another endpoint when there is one. Default: 0.' })),
          budgetPercent: Type.Optional(Type.Integer({ minimum: 0, maximum: 100, description: 'Retries in flight stay under this share of the requests in flight… Default: 20.' })),
          minRetryConcurrency: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, description: '…or this many, whichever is more. Default: 3.' })),
        },
        Strict,
      ),
    ),
  },
  Strict,
);

const Devices = Type.Object(
  {
    registry: Type.Union(
      [
        Type.Object({ file: Type.String({ minLength: 1, description: 'YAML/JSON device file, reloaded on change.' }) }, Strict),
        Type.Object({ redis: Type.Literal(true, { description: 'Redis hashes (needs redis.url): shared by a fleet.' }) }, Strict),
      ],
      { default: { file: 'devices.yaml' } },
    ),
    staleAfterS: Type.Integer({ minimum: 60, default: 7 * 24 * 3600, description: 'A device whose last check-in is older counts as stale.' }),
    cacheTtlMs: Type.Integer({ minimum: 0, maximum: 1000, default: 500, description: 'Redis registry: local cache per device (revocations propagate within this).' }),
    fingerprint: Type.Boolean({ default: true, description: 'Track a passive client fingerprint per device as a risk signal.' }),
  },
  { ...Strict, default: {} },
);

const Redis = Type.Object(
  {
    url: Type.String({ pattern: '^rediss?://', description: 'redis://[user:pass@]host:port/db' }),
    commandTimeoutMs: Type.Integer({ minimum: 1, maximum: 10_000, default: 100, description: 'A slower answer counts as Redis being down.' }),
  },
  { ...Strict, description: 'Shared state for a fleet: DPoP replay cache, device registry. Without it, state is per instance.' },
);

const Assertion = Type.Object(
  {
    header: Type.String({ pattern: '^[a-z0-9-]+$', default: 'x-zt-assertion' }),
    issuer: Type.String({ minLength: 1, default: 'zt-gateway' }),
    lifetimeS: Type.Integer({ minimum: 5, maximum: 60, default: 60 }),
    reuseS: Type.Integer({
      minimum: 0,
      maximum: 55,
      default: 30,
      description: 'Reuse a signed assertion for the same subject, device, posture and route this long (0: sign every request, with the request id).',
    }),
    signingKeys: Type.Array(Type.String({ minLength: 1 }), {
      default: [],
      description: 'Private JWK files; the first signs, all are published (rotate with overlap). Empty: an ephemeral key per process.',
    }),
  },
  { ...Strict, default: {} },
);

const Policies = Type.Object(
  {
    dir: Type.String({ minLength: 1, description: 'Directory of policy files (*.yaml), relative to this file; watched and hot-reloaded.' }),
    decisionLog: Type.Object(
      {
        allowSampleRate: Type.Number({
          minimum: 0,
          maximum: 1,
          default: 0.01,
          description: 'Share of allow decisions written to the decision log; denies and step-ups are always written.',
        }),
        file: Type.Optional(
          Type.String({ minLength: 1, description: 'Write decision lines to this file (appended, relative to this file) instead of stdout.' }),
        ),
        headers: Type.Array(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^`|~-]+$' }), {
          default: ['accept', 'content-length', 'content-type', 'origin', 'user-agent'],
          description:
            'Request headers recorded in decision lines (values cut at 256 characters). Credential-like names (*-key, *-token, *secret*, *password*, cookies, auth…) are refused.',
        }),
        perPrincipalPerSecond: Type.Number({
          minimum: 0.01,
          maximum: 10_000,
          default: 2,
          description: 'Decision lines each principal (subject, else client IP) may write per second after its burst; the rest are counted and summarised.',
        }),
        perPrincipalBurst: Type.Integer({ minimum: 1, maximum: 100_000, default: 20, description: 'Decision lines a principal may write at once.' }),
      },
      { ...Strict, default: {} },
    ),
    reloadDebounceMs: Type.Integer({ minimum: 0, maximum: 10_000, default: 100, description: 'Wait this long after a change before recompiling.' }),
  },
  {
    ...Strict,
    description: 'Access policies (default deny). Without this section, authentication and device trust alone decide.',
  },
);

const Risk = Type.Object(
  {
    enabled: Type.Boolean({ default: true, description: 'Score requests with the anomaly model. false: no risk stage; policies see an empty risk object.' }),
    model: Type.String({ minLength: 1, description: 'The ONNX model (e.g. models/anomaly.onnx), relative to this file. A reload that changes the path or the file\'s content loads, checks and swaps it.' }),
    meta: Type.Optional(
      Type.String({ minLength: 1, description: 'Its metadata (feature spec hash, thresholds, version), relative to this file. Default: the model\'s path with .meta.json for .onnx.' }),
    ),
    onModelError: Type.Union([Type.Literal('fail'), Type.Literal('degraded')], {
      default: 'fail',
      description:
        'A model or metadata that is missing, corrupt or made for another feature extractor. fail: the gateway does not start (exit 2). degraded: it starts without scores (risk empty, policies reading risk fail closed), logged at error, ztgw_risk_model_up 0, shown on /readyz. A reload with a bad new model keeps the running one either way.',
    }),
    threshold: Type.Optional(
      Type.Number({ exclusiveMinimum: 0, exclusiveMaximum: 1, description: 'Score above which risk.flagged is true. Default: the model metadata\'s thresholds.flag.' }),
    ),
    maxPrincipals: Type.Integer({
      minimum: 1,
      maximum: 10_000_000,
      default: 20_000,
      description: 'Principals whose feature history is kept in memory (LRU, ~1.4 KB each). Restart required to change.',
    }),
    maxBatch: Type.Integer({ minimum: 1, maximum: 4096, default: 64, description: 'Rows scored in one model run at most (micro-batching).' }),
  },
  {
    ...Strict,
    description:
      'Anomaly scoring (stage 5, between device and policy): per-principal features, scored by an ONNX model, as risk.score, risk.flagged, risk.top_features and risk.model_version for policies, the decision log and the identity assertion.',
  },
);

export const ConfigSchema = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    server: Server,
    identity: Identity,
    routes: Type.Array(Route, { minItems: 1 }),
    devices: Devices,
    redis: Type.Optional(Redis),
    assertion: Assertion,
    policies: Type.Optional(Policies),
    risk: Type.Optional(Risk),
    limits: Limits,
    upstreams: Type.Record(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' }), Type.Union([UPSTREAM_URL, UpstreamObject]), {
      default: {},
      description:
        'Named upstreams: a base URL, or endpoints with priorities, breaker, bulkhead and retry settings. Routes name them (routes[].upstream) and policies may send a request to one instead of the route\'s (obligations.upstream), e.g. a quarantine service.',
    }),
  },
  { ...Strict, $id: 'https://zt-gateway.local/schema/config.json', title: 'zt-gateway configuration' },
);

export type Config = Static<typeof ConfigSchema>;
export type IssuerConfig = Static<typeof Issuer>;
export type LimitsConfig = Static<typeof Limits>;
export type LimitTierConfig = Static<typeof LimitTier>;
export type UpstreamConfig = Static<typeof UpstreamObject>;
export type BreakerConfig = Static<typeof Breaker>;
export type RouteConfig = Static<typeof Route>;
export type ServerConfig = Static<typeof Server>;
export type DpopConfig = Static<typeof Dpop>;
export type DevicesConfig = Static<typeof Devices>;
export type AssertionConfig = Static<typeof Assertion>;
export type PoliciesConfig = Static<typeof Policies>;
export type RiskConfig = Static<typeof Risk>;

/** The schema as plain JSON (TypeBox adds symbol keys that JSON drops). */
export function jsonSchema(schema: TSchema = ConfigSchema): unknown {
  return JSON.parse(JSON.stringify(schema));
}
