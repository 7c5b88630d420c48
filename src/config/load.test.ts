import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { loadConfigFile, parseConfig } from './load.ts';
import { ConfigError, formatIssue, type ConfigIssue } from '../core/diagnostics.ts';

const MINIMAL = `server:
  listen: { port: 8080 }
identity:
  issuers:
    - name: corp
      issuer: https://idp.example.com/
      audiences: [zt-gateway]
      algorithms: [ES256]
      jwksUrl: https://idp.example.com/jwks.json
routes:
  - name: echo
    pathPrefix: /echo/
    upstream: http://127.0.0.1:8081
`;

/** Replace one exact snippet; throws if it is absent so a stale edit cannot pass silently. */
function edit(text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`"${from}" not in text`);
  return text.replace(from, () => to);
}

/** The issues a rejected config produces; fails the test if the config is accepted. */
function issuesOf(text: string, env: NodeJS.ProcessEnv = {}): ConfigIssue[] {
  try {
    parseConfig(text, 'gw.yaml', env);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  throw new Error('expected the config to be rejected');
}

/** 1-based line of the nth occurrence of `needle`, so tests say what they point at. */
function lineOf(text: string, needle: string, nth = 1): number {
  let index = -1;
  for (let i = 0; i < nth; i++) {
    index = text.indexOf(needle, index + 1);
    if (index < 0) throw new Error(`"${needle}" not in text`);
  }
  return text.slice(0, index).split('\n').length;
}

/** 1-based column of `needle` on its line. */
function colOf(text: string, needle: string): number {
  const index = text.indexOf(needle);
  return index - text.lastIndexOf('\n', index - 1);
}

describe('parseConfig: valid input', () => {
  it('fills defaults into a minimal config', () => {
    const config = parseConfig(MINIMAL, 'gw.yaml', {});
    expect(config.server.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.server.admin).toEqual({ host: '127.0.0.1', port: 9090, hosts: [], metricsRequireToken: false });
    expect(config.server.logLevel).toBe('info');
    expect(config.server.trustedProxies).toEqual([]);
    expect(config.server.timeouts.headersMs).toBe(10_000);
    expect(config.identity.tokenCache).toEqual({ maxEntries: 10_000, maxTtlS: 300 });
    expect(config.identity.issuers[0]).toMatchObject({ clockToleranceS: 30, groupsClaim: 'groups', jwksCacheMaxAgeS: 600 });
    expect(config.routes[0]).toMatchObject({ public: false, stripPrefix: false, websocket: false, caseInsensitive: false });
    expect(config.routes[0]!.response).toEqual({ banners: 'strip', errorBodies: 'replace', redirects: 'rewrite', cookies: 'scoped', ownHostHeaders: [], setHeaders: {} });
  });

  it('accepts a config with only a public route (server and identity default)', () => {
    const config = parseConfig('routes:\n  - { name: open, pathPrefix: /, upstream: "http://u", public: true }\n', 'gw.yaml', {});
    expect(config.identity.issuers).toEqual([]);
    expect(config.server.listen.port).toBe(8080);
  });

  it('accepts valid trustedProxies forms', () => {
    const text = edit(MINIMAL, 'server:\n', 'server:\n  trustedProxies: [loopback, uniquelocal, 10.0.0.0/8, "::1", 192.168.1.7]\n');
    expect(parseConfig(text, 'gw.yaml', {}).server.trustedProxies).toHaveLength(5);
  });
});

describe('parseConfig: ${VAR} interpolation', () => {
  const withPort = edit(MINIMAL, 'listen: { port: 8080 }', 'listen:\n    port: ${PORT:-8081}');

  it('uses the default when the variable is unset or empty, and coerces it to the schema type', () => {
    expect(parseConfig(withPort, 'gw.yaml', {}).server.listen.port).toBe(8081);
    expect(parseConfig(withPort, 'gw.yaml', { PORT: '' }).server.listen.port).toBe(8081);
  });

  it('uses the variable when set', () => {
    expect(parseConfig(withPort, 'gw.yaml', { PORT: '9000' }).server.listen.port).toBe(9000);
  });

  it('interpolates inside a longer string', () => {
    const text = edit(MINIMAL, 'issuer: https://idp.example.com/', 'issuer: https://${IDP_HOST}/realms/${REALM:-main}');
    expect(parseConfig(text, 'gw.yaml', { IDP_HOST: 'sso.corp' }).identity.issuers[0]?.issuer).toBe('https://sso.corp/realms/main');
  });

  it('turns $${ into a literal ${ without looking the name up', () => {
    const text = edit(MINIMAL, 'issuer: https://idp.example.com/', 'issuer: "urn:$${TENANT}"');
    expect(parseConfig(text, 'gw.yaml', { TENANT: 'nope' }).identity.issuers[0]?.issuer).toBe('urn:${TENANT}');
  });

  it('cannot inject YAML structure: a value is always one string', () => {
    const text = edit(MINIMAL, 'issuer: https://idp.example.com/', 'issuer: ${ISS}');
    const injected = 'x\n      jwksFile: /etc/passwd';
    const config = parseConfig(text, 'gw.yaml', { ISS: injected });
    expect(config.identity.issuers[0]?.issuer).toBe(injected);
    expect(config.identity.issuers[0]?.jwksFile).toBeUndefined();
  });

  it('reports an unset variable without default at its scalar, and every one of them', () => {
    const text = edit(edit(MINIMAL, 'port: 8080', 'port: "${PORT}"'), 'upstream: http://127.0.0.1:8081', 'upstream: ${UPSTREAM}');
    const issues = issuesOf(text);
    expect(issues).toHaveLength(2);
    expect(issues[0]).toMatchObject({ line: lineOf(text, '${PORT}'), col: colOf(text, '"${PORT}"'), field: 'server.listen.port' });
    expect(issues[0]?.message).toContain('PORT is not set');
    expect(issues[1]).toMatchObject({ line: lineOf(text, '${UPSTREAM}'), field: 'routes[0].upstream' });
  });

  it('reports a malformed reference', () => {
    const text = edit(MINIMAL, 'upstream: http://127.0.0.1:8081', 'upstream: "http://${HOST"');
    const [issue, ...rest] = issuesOf(text, { HOST: 'h' });
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(text, '${HOST'), field: 'routes[0].upstream' });
    expect(issue?.message).toMatch(/malformed/);
  });
});

describe('parseConfig: YAML errors', () => {
  it('reports a syntax error with its position', () => {
    const text = 'server:\n  listen: [port: 8080\nroutes: []\n';
    // Only the first error: the parser's recovery reports everything after it too.
    expect(issuesOf(text)).toEqual([expect.objectContaining({ file: 'gw.yaml', line: 3, col: 1, field: '' })]);
  });

  it('explains that ${VAR} must be quoted inside a flow collection', () => {
    const text = edit(MINIMAL, 'port: 8080', 'port: ${PORT}');
    const [issue, ...rest] = issuesOf(text, { PORT: '1' });
    expect(rest).toEqual([]);
    expect(issue?.line).toBe(lineOf(text, '${PORT}'));
    expect(issue?.message).toContain('quote values that use ${...}');
  });

  it('treats a duplicate key as an error at the second key', () => {
    const text = edit(MINIMAL, '    upstream: http://127.0.0.1:8081', '    upstream: http://127.0.0.1:8081\n    public: false\n    public: true');
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ line: lineOf(text, 'public: true'), col: 5 });
    expect(issue?.message).toMatch(/unique/);
  });

  it('treats a warning (unknown tag) as an error', () => {
    const text = edit(MINIMAL, 'pathPrefix: /echo/', 'pathPrefix: !custom /echo/');
    expect(issuesOf(text)[0]).toMatchObject({ line: lineOf(text, '!custom') });
  });
});

describe('parseConfig: schema errors', () => {
  it('names an unknown field and points at its key, suggesting a near miss', () => {
    const text = edit(MINIMAL, '    upstream: http://127.0.0.1:8081', '    upstream: http://127.0.0.1:8081\n    timeout: 5');
    expect(issuesOf(text)).toEqual([
      {
        file: 'gw.yaml',
        line: lineOf(text, 'timeout: 5'),
        col: 5,
        field: 'routes[0].timeout',
        message: 'unknown field "timeout" (did you mean "timeoutMs"?)',
      },
    ]);
  });

  it('reports a wrong type at the value', () => {
    const text = edit(MINIMAL, 'port: 8080', 'port: eighty');
    expect(issuesOf(text)).toEqual([
      {
        file: 'gw.yaml',
        line: 2,
        col: colOf(text, 'eighty'),
        field: 'server.listen.port',
        message: 'expected integer, got string',
      },
    ]);
  });

  it('reports a missing required field at the object that lacks it', () => {
    const text = edit(MINIMAL, '    upstream: http://127.0.0.1:8081\n', '');
    expect(issuesOf(text)).toEqual([
      { file: 'gw.yaml', line: lineOf(text, 'name: echo'), col: 5, field: 'routes[0].upstream', message: 'required field is missing' },
    ]);
  });

  it('folds a union of literals into one readable issue', () => {
    const text = edit(MINIMAL, 'algorithms: [ES256]', 'algorithms: [ES256, none]');
    const issues = issuesOf(text);
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ line: lineOf(text, 'none'), col: colOf(text, 'none'), field: 'identity.issuers[0].algorithms[1]' });
    expect(issues[0]?.message).toMatch(/^must be one of: "RS256", .*"HS512"$/);
    expect(issues[0]?.message.match(/"ES256"/g)).toHaveLength(1);
  });

  it('reports every schema error at once, in line order', () => {
    const text = edit(edit(MINIMAL, 'server:\n', 'server:\n  logLevel: loud\n'), 'pathPrefix: /echo/', 'pathPrefix: echo');
    const issues = issuesOf(text);
    expect(issues.map((i) => i.field)).toEqual(['server.logLevel', 'routes[0].pathPrefix']);
    expect(issues[1]?.message).toBe('must match pattern "^/"');
  });

  it('does not echo a rejected value, which may be a secret from the environment', () => {
    const text = edit(edit(MINIMAL, 'jwksUrl: https://idp.example.com/jwks.json', 'secret: ${HMAC_KEY}'), '[ES256]', '[HS256]');
    const [issue] = issuesOf(text, { HMAC_KEY: 'hunter2-too-short' });
    expect(issue?.field).toBe('identity.issuers[0].secret');
    expect(formatIssue(issue!)).not.toContain('hunter2');
  });

  it('rejects an empty document at 1:1', () => {
    expect(issuesOf('')).toEqual([{ file: 'gw.yaml', line: 1, col: 1, field: '', message: 'expected object, got null' }]);
  });
});

describe('parseConfig: semantic checks', () => {
  const secondRoute = (extra: string) =>
    MINIMAL + `  - name: other\n    pathPrefix: /other/\n    upstream: http://127.0.0.1:8082\n${extra}`;

  it('rejects duplicate route names at the second one', () => {
    const text = edit(secondRoute(''), 'name: other', 'name: echo');
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(text, 'name: echo', 2), field: 'routes[1].name' });
    expect(issue?.message).toContain('duplicate route name "echo"');
  });

  it('rejects duplicate issuer names', () => {
    const issuer = MINIMAL.slice(MINIMAL.indexOf('    - name: corp'), MINIMAL.indexOf('routes:'));
    const text = edit(MINIMAL, 'routes:', `${issuer}routes:`);
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ line: lineOf(text, 'name: corp', 2), field: 'identity.issuers[1].name' });
    expect(issue?.message).toContain('duplicate issuer name "corp"');
  });

  it('rejects a route naming an unknown issuer', () => {
    const text = secondRoute('    issuers: [corp, partner]\n');
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(text, 'partner'), col: colOf(text, 'partner'), field: 'routes[1].issuers[1]' });
    expect(issue?.message).toBe('unknown issuer "partner" (configured: corp)');
  });

  it('rejects a non-public route when no issuers are configured', () => {
    const text = 'routes:\n  - name: open\n    pathPrefix: /\n    upstream: http://u\n    public: true\n  - name: closed\n    pathPrefix: /x/\n    upstream: http://u\n';
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(text, 'name: closed'), field: 'routes[1]' });
    expect(issue?.message).toMatch(/requires authentication but identity.issuers is empty/);
  });

  it('requires exactly one key source per issuer', () => {
    const none = edit(MINIMAL, '      jwksUrl: https://idp.example.com/jwks.json\n', '');
    expect(issuesOf(none)).toEqual([
      expect.objectContaining({ line: lineOf(none, 'name: corp'), field: 'identity.issuers[0]', message: 'set exactly one of jwksUrl, jwksFile, secret (found: none)' }),
    ]);
    const two = edit(MINIMAL, 'jwksUrl:', 'jwksFile: keys.json\n      jwksUrl:');
    expect(issuesOf(two)).toEqual([expect.objectContaining({ field: 'identity.issuers[0]', message: expect.stringContaining('found: jwksUrl, jwksFile') })]);
  });

  it('rejects a jwksFile that is missing or not a JWKS, at the jwksFile line', () => {
    const missing = edit(MINIMAL, 'jwksUrl: https://idp.example.com/jwks.json', 'jwksFile: no-such-keys.json');
    expect(issuesOf(missing)).toEqual([
      expect.objectContaining({ field: 'identity.issuers[0].jwksFile', line: 9, message: expect.stringMatching(/cannot read JWKS file .*no-such-keys\.json \(ENOENT\)/) }),
    ]);
    const notJwks = edit(MINIMAL, 'jwksUrl: https://idp.example.com/jwks.json', 'jwksFile: package.json');
    expect(issuesOf(notJwks)[0]?.message).toMatch(/is not a JWKS/);
  });

  it('rejects HS* with a key set, and asymmetric algorithms with a secret (algorithm confusion)', () => {
    const hsWithJwks = edit(MINIMAL, '[ES256]', '[ES256, HS256]');
    expect(issuesOf(hsWithJwks)).toEqual([
      expect.objectContaining({ line: lineOf(hsWithJwks, 'HS256'), col: colOf(hsWithJwks, 'HS256'), field: 'identity.issuers[0].algorithms[1]' }),
    ]);
    const secret = 's'.repeat(32);
    const esWithSecret = edit(edit(MINIMAL, 'jwksUrl: https://idp.example.com/jwks.json', `secret: ${secret}`), '[ES256]', '[HS256, ES256]');
    const [issue, ...rest] = issuesOf(esWithSecret);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ field: 'identity.issuers[0].algorithms[1]' });
    expect(issue?.message).toMatch(/^ES256 cannot be used with "secret"/);
    // And the pure HS form is fine.
    expect(() => parseConfig(edit(esWithSecret, '[HS256, ES256]', '[HS256, HS512]'), 'gw.yaml', {})).not.toThrow();
  });

  it('rejects trustedProxies entries that are not IPs, CIDRs or keywords', () => {
    const text = edit(MINIMAL, 'server:\n', 'server:\n  trustedProxies:\n    - loopback\n    - 10.0.0.0/33\n    - proxy.internal\n');
    const issues = issuesOf(text);
    expect(issues.map(({ line, field }) => ({ line, field }))).toEqual([
      { line: lineOf(text, '10.0.0.0/33'), field: 'server.trustedProxies[1]' },
      { line: lineOf(text, 'proxy.internal'), field: 'server.trustedProxies[2]' },
    ]);
  });

  it('rejects two routes with the same hosts (in any order or case) and pathPrefix', () => {
    const text =
      edit(MINIMAL, '    pathPrefix: /echo/', '    hosts: [a.example.com, b.example.com]\n    pathPrefix: /echo/') +
      '  - name: shadow\n    hosts: [B.example.com, a.example.com]\n    pathPrefix: /echo/\n    upstream: http://u\n';
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(text, 'pathPrefix: /echo/', 2), field: 'routes[1].pathPrefix' });
    expect(issue?.message).toContain('route "echo"');
    // Same prefix on different hosts is a legitimate split.
    expect(() => parseConfig(edit(text, 'B.example.com, a.example.com', 'c.example.com'), 'gw.yaml', {})).not.toThrow();
  });

  it('rejects two routes whose prefixes differ only in case or a trailing slash', () => {
    const upper = secondRoute('').replace('pathPrefix: /other/', 'pathPrefix: /Echo/');
    const [issue, ...rest] = issuesOf(upper);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ line: lineOf(upper, '/Echo/'), field: 'routes[1].pathPrefix' });
    expect(issue?.message).toMatch(/route "echo" .*differs from its "\/echo\/" only in case/);
    const slash = secondRoute('').replace('pathPrefix: /other/', 'pathPrefix: /echo');
    expect(issuesOf(slash)[0]?.message).toContain('one of them can never match');
  });

  it('reads caseInsensitive on a route, off by default', () => {
    const config = parseConfig(secondRoute('    caseInsensitive: true\n'), 'gw.yaml', {});
    expect(config.routes.map((r) => r.caseInsensitive)).toEqual([false, true]);
  });
});

describe('parseConfig: route hosts', () => {
  const withHosts = (...hosts: string[]) => edit(MINIMAL, '    pathPrefix: /echo/', `    hosts:\n${hosts.map((h) => `      - ${JSON.stringify(h)}\n`).join('')}    pathPrefix: /echo/`);

  it.each([
    ['example.com:8443', 'hosts entries have no port: put the port in server.publicOrigins'],
    ['[::1]:8443', 'hosts entries have no port: put the port in server.publicOrigins'],
    ['example.com.', 'hosts entries have no trailing dot'],
    ['https://example.com', 'hosts entries are host names, not URLs: leave out the scheme'],
    ['example.com/api', 'hosts entries have no path: put the path in pathPrefix'],
    ['my_host.internal', 'hosts entries are host names (letters, digits, "-" between dots'],
    ['::1', 'write an IPv6 address in brackets'],
    ['*', 'leave hosts out to answer any host'],
    ['api.*.example.com', '"*" only as the whole first label'],
  ])('refuses %j at its file:line, saying what to write instead', (host, message) => {
    const text = withHosts('ok.example.com', host);
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ file: 'gw.yaml', line: lineOf(text, JSON.stringify(host)), field: 'routes[0].hosts[1]' });
    expect(issue?.message).toContain(message);
    expect(formatIssue(issue!)).toMatch(/^gw\.yaml:\d+:\d+: routes\[0\]\.hosts\[1\]: /);
  });

  it('accepts names, wildcards, IPv4 and bracketed IPv6; upper case is normalised when compiled, not refused', () => {
    const config = parseConfig(withHosts('API.Example.com', '*.example.com', '10.0.0.5', '[::1]'), 'gw.yaml', {});
    expect(config.routes[0]?.hosts).toEqual(['API.Example.com', '*.example.com', '10.0.0.5', '[::1]']);
  });

  it('explains the same typos in server.admin.hosts', () => {
    const text = edit(MINIMAL, '  listen: { port: 8080 }\n', '  listen: { port: 8080 }\n  admin:\n    hosts: ["metrics.internal:9090"]\n');
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ line: lineOf(text, 'metrics.internal'), field: 'server.admin.hosts[0]' });
    expect(issue?.message).toContain('have no port');
  });

  it('refuses response.setHeaders that frame the message or are the gateway\'s own, at their line', () => {
    const text = edit(MINIMAL, '    upstream: http://127.0.0.1:8081\n', '    upstream: http://127.0.0.1:8081\n    response:\n      setHeaders:\n        Content-Security-Policy: "default-src \'none\'"\n        Content-Length: "0"\n        X-Request-Id: mine\n');
    const issues = issuesOf(text);
    expect(issues.map((i) => [i.line, i.field])).toEqual([
      [lineOf(text, 'Content-Length'), 'routes[0].response.setHeaders["Content-Length"]'],
      [lineOf(text, 'X-Request-Id'), 'routes[0].response.setHeaders["X-Request-Id"]'],
    ]);
    expect(issues[0]!.message).toContain('cannot set Content-Length');
  });
});

describe('ConfigError and formatIssue', () => {
  it('formats file:line:col: field: message, omitting an empty field', () => {
    expect(formatIssue({ file: 'a.yaml', line: 3, col: 7, field: 'routes[0].upstream', message: 'bad' })).toBe('a.yaml:3:7: routes[0].upstream: bad');
    expect(formatIssue({ file: 'a.yaml', line: 1, col: 1, field: '', message: 'bad' })).toBe('a.yaml:1:1: bad');
  });

  it('has the formatted list as its message', () => {
    const issues = [
      { file: 'a', line: 1, col: 1, field: '', message: 'x' },
      { file: 'a', line: 2, col: 3, field: 'f', message: 'y' },
    ];
    const err = new ConfigError(issues);
    expect(err.message).toBe('a:1:1: x\na:2:3: f: y');
    expect(err.issues).toBe(issues);
    expect(err).toBeInstanceOf(Error);
  });
});

describe('loadConfigFile', () => {
  it('reads and parses the file, returning its directory and text', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ztgw-config-'));
    const file = join(dir, 'gw.yaml');
    writeFileSync(file, edit(MINIMAL, 'port: 8080', 'port: "${P}"'));
    const loaded = loadConfigFile(file, { P: '1234' });
    expect(loaded.dir).toBe(dir);
    expect(loaded.text).toContain('${P}');
    expect(loaded.config.server.listen.port).toBe(1234);
  });

  it('turns an unreadable file into a ConfigError naming it', () => {
    const file = join(tmpdir(), 'ztgw-does-not-exist.yaml');
    expect(() => loadConfigFile(file, {})).toThrow(ConfigError);
    expect(() => loadConfigFile(file, {})).toThrow(`${file}:1:1: cannot read file (ENOENT)`);
  });
});
