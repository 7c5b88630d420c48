// Random and adversarial CEL conditions for the fuzz tests: text that policy authors, a
// broken editor or an attacker with write access to the policy repository could produce.
// Seeded (random.ts), so a failure reproduces from its seed and index.

/** Names JavaScript objects inherit, and the one that makes an object a protobuf message to @bufbuild/cel. */
export const PROTOTYPE_NAMES = [
  'constructor',
  '__proto__',
  'toString',
  'valueOf',
  'hasOwnProperty',
  'isPrototypeOf',
  'propertyIsEnumerable',
  'toLocaleString',
  '__defineGetter__',
  '__lookupSetter__',
  'prototype',
  '$typeName',
  'length',
  'then',
];

const VARIABLES = ['request', 'identity', 'device', 'risk'];
const FIELDS = ['method', 'host', 'path', 'route', 'ip', 'headers', 'time', 'sub', 'groups', 'claims', 'amr', 'acr', 'auth_time', 'id', 'enrolled', 'posture', 'managed', 'trust', 'score', 'flagged'];
const FUNCTIONS = ['has', 'size', 'int', 'uint', 'double', 'string', 'bytes', 'bool', 'dyn', 'type', 'timestamp', 'duration', 'ip_in', 'glob', 'hour_in', 'weekday_in', 'matches'];
const METHODS = ['matches', 'startsWith', 'endsWith', 'contains', 'size', 'exists', 'all', 'exists_one', 'map', 'filter', 'getHours'];
const BINARY = ['&&', '||', '==', '!=', '<', '<=', '>', '>=', 'in', '+', '-', '*', '/', '%'];
const LITERALS = [
  'true',
  'false',
  'null',
  '0',
  '-1',
  '1u',
  '2.5',
  '-0.0',
  '1e400',
  '9223372036854775807',
  '9223372036854775808',
  '-9223372036854775809',
  '18446744073709551616u',
  '0x7fffffffffffffff',
  '99999999999999999999999999999999999999',
  '""',
  "''",
  '"\\u0028\\U0001F642\\x41\\101\\n"',
  '"\\uD800"',
  '"\\u{41}"',
  '"\\q"',
  'r"\\d+(\\"',
  "'''multi\nline'''",
  'b"\\xff"',
  '"🙂"',
  '"\\u0000"',
  '"/admin/**"',
  '"10.0.0.0/8"',
  '"Europe/Berlin"',
  '"(a+)+$"',
  '"^[a-z0-9._%+-]+@[a-z0-9.-]+\\\\.[a-z]{2,}$"',
  '"("',
  '"1h"',
  '"2024-06-03T08:30:00Z"',
];
const ODD_TEXT = ['(', ')', '[', ']', '{', '}', '.', ',', '?', ':', '!', '"', "'", '\\', '`', '@', '#', '$', '\u0000', '\uFEFF', '\u2028', 'é', '🙂', '\n', '\t', ' ', '//', '/*'];

export interface Fuzzer {
  /** A random condition: a structured expression, token soup, or a mutation of either. */
  condition(): string;
}

export function createFuzzer(rnd: () => number): Fuzzer {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const chance = (p: number) => rnd() < p;

  const name = () => (chance(0.3) ? pick(PROTOTYPE_NAMES) : pick(FIELDS));

  function expr(depth: number): string {
    if (depth <= 0 || chance(0.25)) {
      if (chance(0.4)) return pick(LITERALS);
      let path = chance(0.1) ? pick(PROTOTYPE_NAMES) : pick(VARIABLES);
      for (let n = Math.floor(rnd() * 3); n > 0; n--) path += chance(0.2) ? `[${pick(LITERALS)}]` : `.${name()}`;
      return path;
    }
    switch (Math.floor(rnd() * 9)) {
      case 0:
        return `${expr(depth - 1)} ${pick(BINARY)} ${expr(depth - 1)}`;
      case 1:
        return `!${expr(depth - 1)}`;
      case 2:
        return `(${expr(depth - 1)})`;
      case 3:
        return `${expr(depth - 1)} ? ${expr(depth - 1)} : ${expr(depth - 1)}`;
      case 4:
        return `${pick(FUNCTIONS)}(${Array.from({ length: Math.floor(rnd() * 3) }, () => expr(depth - 1)).join(', ')})`;
      case 5: {
        const method = pick(METHODS);
        const macro = ['exists', 'all', 'exists_one', 'map', 'filter'].includes(method);
        const v = chance(0.5) ? pick(PROTOTYPE_NAMES.filter((n) => /^[a-z_]\w*$/i.test(n))) : 'x';
        return macro ? `${expr(depth - 1)}.${method}(${v}, ${expr(depth - 1)})` : `${expr(depth - 1)}.${method}(${expr(depth - 1)})`;
      }
      case 6:
        return `[${Array.from({ length: Math.floor(rnd() * 4) }, () => expr(depth - 1)).join(', ')}]`;
      case 7:
        return `{${Array.from({ length: Math.floor(rnd() * 3) }, () => `${expr(depth - 1)}: ${expr(depth - 1)}`).join(', ')}}`;
      default:
        return `has(${pick(VARIABLES)}.${name()}${chance(0.5) ? `.${name()}` : ''})`;
    }
  }

  /** A condition that type-checks more often than not: known fields, operators of the right types. */
  function typed(depth: number): string {
    if (depth <= 0 || chance(0.3)) {
      const key = JSON.stringify(chance(0.5) ? pick(PROTOTYPE_NAMES) : pick(['x-tenant', 'admin', 'role', 'n', 'l', 'a']));
      return pick([
        () => `request.method == ${pick(['"GET"', '"POST"', '""'])}`,
        () => `"eng" in identity.groups`,
        () => `has(identity.claims.${pick(PROTOTYPE_NAMES.filter((n) => /^[a-z_]\w*$/i.test(n)))})`,
        () => `identity.claims[${key}] == ${pick(['true', '1', '1.0', '"x"', '9007199254740993'])}`,
        () => `identity.claims.role.value == true`,
        () => `identity.claims[${key}][${key}] == ${pick(['true', '"x"'])}`,
        () => `${key} in identity.claims`,
        () => `${key} in request.headers`,
        () => `request.headers[${key}] == "x"`,
        () => `has(request.headers.${pick(['constructor', 'toString', 'x_tenant'])})`,
        () => `request.path.${pick(['startsWith', 'endsWith', 'contains', 'matches'])}(${pick(LITERALS.filter((l) => l.startsWith('"')))})`,
        () => `size(request.path) ${pick(['<', '>', '=='])} ${pick(['0', '1024', '9223372036854775807'])}`,
        () => `ip_in(request.ip, "10.0.0.0/8")`,
        () => `glob(request.path, "/api/**")`,
        () => `hour_in(request.time, "UTC") >= 8`,
        () => `device.posture.trust in ["high", "medium"]`,
        () => `risk.score ${pick(['<', '>='])} ${pick(['0.5', '1e308', '-0.0'])}`,
        () => `identity.claims.l.exists(${pick(['x', 'constructor', '__proto__'])}, true)`,
        () => `identity.claims.n ${pick(['<', '>', '=='])} ${pick(['1', '1e308', '1u'])}`,
      ])();
    }
    switch (Math.floor(rnd() * 4)) {
      case 0:
        return `${typed(depth - 1)} ${pick(['&&', '||'])} ${typed(depth - 1)}`;
      case 1:
        return `!(${typed(depth - 1)})`;
      case 2:
        return `(${typed(depth - 1)} ? ${typed(depth - 1)} : ${typed(depth - 1)})`;
      default:
        return `(${typed(depth - 1)})`;
    }
  }

  function soup(): string {
    const parts: string[] = [];
    for (let n = 1 + Math.floor(rnd() * 12); n > 0; n--) {
      const r = rnd();
      parts.push(r < 0.3 ? pick(ODD_TEXT) : r < 0.5 ? pick(LITERALS) : r < 0.7 ? pick(BINARY) : r < 0.85 ? name() : pick(VARIABLES));
    }
    return parts.join(chance(0.5) ? ' ' : '');
  }

  function mutate(text: string): string {
    let out = text;
    for (let n = 1 + Math.floor(rnd() * 3); n > 0; n--) {
      const at = Math.floor(rnd() * (out.length + 1));
      const r = rnd();
      if (r < 0.4) out = out.slice(0, at) + pick(ODD_TEXT) + out.slice(at);
      else if (r < 0.7) out = out.slice(0, at) + out.slice(at + 1 + Math.floor(rnd() * 4));
      else out = out.slice(0, at) + pick(PROTOTYPE_NAMES) + out.slice(at);
    }
    return out;
  }

  return {
    condition() {
      const r = rnd();
      if (r < 0.3) return typed(1 + Math.floor(rnd() * 4));
      if (r < 0.6) return expr(1 + Math.floor(rnd() * 5));
      if (r < 0.75) return soup();
      return mutate(pick([expr, typed])(3));
    },
  };
}

/** Conditions at and past every limit: nesting, length, literal size, prototype names. */
export function adversarialConditions(): string[] {
  return [
    ...PROTOTYPE_NAMES.flatMap((n) => [
      `request.${n} == "x"`,
      `has(request.${n})`,
      `identity.${n}`,
      `device.posture.${n} == true`,
      `${n} == 1`,
      `request.path.${n}()`,
      `identity.claims.${n} == "x"`,
      `[1].exists(${/^[a-z_]\w*$/i.test(n) ? n : 'x'}, true)`,
    ]),
    `${'('.repeat(500)}true${')'.repeat(500)}`,
    `${'['.repeat(300)}${']'.repeat(300)} == []`,
    `${'!'.repeat(10_000)}true`,
    `${'-'.repeat(5001)}1 == 1`,
    `${Array(500).fill('1').join(' + ')} > 0`,
    `has(request${'.a'.repeat(300)})`,
    Array(1000).fill('request.method == "GET"').join(' && '),
    Array(1000).fill('true').join(' || '),
    `request.path == "${'a'.repeat(32_000)}"`,
    `request.path == "${'a'.repeat(1_000_000)}"`,
    `${'9'.repeat(5000)} > 0`,
    `request.method in [${Array.from({ length: 1000 }, (_, i) => `"m${i}"`).join(', ')}]`,
    `request.path.matches("${'(a|'.repeat(300)}b${')'.repeat(300)}")`,
    `request.path.matches("${'a'.repeat(2000)}")`,
    'request.path.matches("(a)\\\\1")',
    `"${'\\u0041'.repeat(5000)}" == request.path`,
    '"\\uD800\\uDC00" == request.path',
    `${'dyn('.repeat(99)}true${')'.repeat(99)}`,
    `${'dyn('.repeat(150)}true${')'.repeat(150)}`,
    '',
    ' ',
    '\u0000',
    '"',
    "'''",
    'request.',
    '}}}}',
  ];
}
