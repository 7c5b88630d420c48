// Synthetic edge traffic for the anomaly model: a company's employees (roles, offices in four
// time zones, working hours, think times, phones on carrier networks, travel, new laptops,
// expired tokens, upstream outages) and service accounts (cron-like cadences, sync jobs that
// read ids in sequence), plus labelled attack episodes of seven families. Deterministic from
// --seed (mulberry32, the house PRNG of test/helpers/random.ts).
//
//   node_modules/.bin/node models/train/generate.ts --seed 1 --days 4 --out /tmp/train.jsonl
//
// Each line is the trace contract ({ts, principal, device, ip, method, path, status, bytes},
// + authFailure / claimedPrincipal / fingerprintChanged / denied when set) plus "label": "benign" | family.
// A victim's own benign lines during an episode and for 10 min after it carry
// "context": "after-attack": their features legitimately describe the attack (the windows
// still hold it), so evaluate.ts leaves them out of the benign side instead of counting
// them as false positives.
import { createWriteStream } from 'node:fs';
import { parseArgs } from 'node:util';
import { random } from '../../test/helpers/random.ts';

export const FAMILIES = ['flood', 'credential_stuffing', 'enumeration', 'slow_exfiltration', 'stolen_token', 'off_hours', 'sa_drift'] as const;
export type Family = (typeof FAMILIES)[number];

export interface Line {
  ts: number;
  principal: string;
  device: string;
  ip: string;
  method: string;
  path: string;
  status: number;
  bytes: number;
  authFailure?: true;
  /** On a failed authentication (principal ''), the subject the credential claimed. */
  claimedPrincipal?: string;
  fingerprintChanged?: true;
  denied?: true;
  label: 'benign' | Family;
  context?: 'after-attack';
}

const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
/**
 * Days of history before the first attack; evaluate.ts scores only lines after it. The
 * per-principal features (baselines, hour histogram, known networks) need this much to mean
 * anything, as they do in the gateway after a restart.
 */
export const WARMUP_DAYS = 2;
/** Monday 2025-01-06 00:00 UTC. */
const EPOCH = Date.UTC(2025, 0, 6);

type Rng = () => number;

function tools(rng: Rng) {
  const uniform = (a: number, b: number): number => a + (b - a) * rng();
  const int = (a: number, b: number): number => Math.floor(uniform(a, b + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!;
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  const lognormal = (median: number, sigma: number): number => median * Math.exp(sigma * normal());
  const chance = (p: number): boolean => rng() < p;
  /** Zipf-like index in [0, n): small indexes are far more frequent. */
  const zipf = (n: number): number => Math.min(n - 1, Math.floor(n * rng() ** 2.5));
  const weighted = <T extends string>(w: Readonly<Record<T, number>>): T => {
    const entries = Object.entries(w) as [T, number][];
    let r = rng() * entries.reduce((a, [, v]) => a + v, 0);
    for (const [k, v] of entries) if ((r -= v) < 0) return k;
    return entries[entries.length - 1]![0];
  };
  const hex = (n: number): string => {
    let s = '';
    for (let i = 0; i < n; i++) s += '0123456789abcdef'[Math.floor(rng() * 16)];
    return s;
  };
  const uuid = (): string => `${hex(8)}-${hex(4)}-4${hex(3)}-a${hex(3)}-${hex(12)}`;
  return { uniform, int, pick, normal, lognormal, chance, zipf, weighted, hex, uuid };
}
type Tools = ReturnType<typeof tools>;

// ---- The API: endpoints, their id spaces and response sizes. ----

interface Endpoint {
  readonly method: string;
  /** `{id}` numeric, `{uuid}`, `{name}` from a small set. */
  readonly path: string;
  readonly ids?: 'customer' | 'order' | 'ticket' | 'repo' | 'build' | 'invoice' | 'employee' | 'deal' | 'user';
  /** Median response bytes and spread (lognormal sigma). */
  readonly bytes: number;
  readonly sigma: number;
}

const E = {
  me: { method: 'GET', path: '/api/v1/me', bytes: 600, sigma: 0.1 },
  notifications: { method: 'GET', path: '/api/v1/notifications', bytes: 1500, sigma: 0.6 },
  search: { method: 'GET', path: '/api/v1/search?q=', bytes: 12_000, sigma: 0.8 },
  customer: { method: 'GET', path: '/api/v1/customers/{id}', ids: 'customer', bytes: 2500, sigma: 0.4 },
  customerOrders: { method: 'GET', path: '/api/v1/customers/{id}/orders', ids: 'customer', bytes: 9000, sigma: 0.8 },
  order: { method: 'GET', path: '/api/v1/orders/{id}', ids: 'order', bytes: 3000, sigma: 0.5 },
  ticket: { method: 'GET', path: '/api/v1/tickets/{id}', ids: 'ticket', bytes: 4000, sigma: 0.6 },
  ticketList: { method: 'GET', path: '/api/v1/tickets?status=open', bytes: 20_000, sigma: 0.5 },
  ticketComment: { method: 'POST', path: '/api/v1/tickets/{id}/comments', ids: 'ticket', bytes: 300, sigma: 0.2 },
  repoCommits: { method: 'GET', path: '/api/v1/repos/{id}/commits', ids: 'repo', bytes: 15_000, sigma: 0.6 },
  build: { method: 'GET', path: '/api/v1/builds/{id}', ids: 'build', bytes: 3000, sigma: 0.4 },
  buildLog: { method: 'GET', path: '/api/v1/builds/{id}/log', ids: 'build', bytes: 60_000, sigma: 1.0 },
  invoice: { method: 'GET', path: '/api/v1/invoices/{uuid}', ids: 'invoice', bytes: 5000, sigma: 0.5 },
  report: { method: 'GET', path: '/api/v1/reports/{name}?period=month', bytes: 120_000, sigma: 0.9 },
  employee: { method: 'GET', path: '/api/v1/employees/{id}', ids: 'employee', bytes: 3500, sigma: 0.3 },
  employeeUpdate: { method: 'PUT', path: '/api/v1/employees/{id}', ids: 'employee', bytes: 400, sigma: 0.2 },
  deal: { method: 'GET', path: '/api/v1/deals/{id}', ids: 'deal', bytes: 2800, sigma: 0.4 },
  dealUpdate: { method: 'PATCH', path: '/api/v1/deals/{id}', ids: 'deal', bytes: 400, sigma: 0.2 },
  adminUser: { method: 'GET', path: '/api/v1/admin/users/{id}', ids: 'user', bytes: 2000, sigma: 0.3 },
  audit: { method: 'GET', path: '/api/v1/admin/audit?limit=100', bytes: 40_000, sigma: 0.4 },
  exportDoc: { method: 'GET', path: '/api/v1/customers/{id}/documents/{uuid}', ids: 'customer', bytes: 900_000, sigma: 0.8 },
  queue: { method: 'GET', path: '/api/v1/queue/jobs?limit=50', bytes: 5000, sigma: 0.7 },
  metrics: { method: 'POST', path: '/api/v1/metrics', bytes: 80, sigma: 0.05 },
  syncOrders: { method: 'GET', path: '/api/v1/orders/{id}', ids: 'order', bytes: 3000, sigma: 0.5 },
  health: { method: 'GET', path: '/api/v1/health', bytes: 60, sigma: 0.05 },
} as const satisfies Record<string, Endpoint>;

const ID_SPACE: Record<NonNullable<Endpoint['ids']>, number> = {
  customer: 80_000,
  order: 900_000,
  ticket: 200_000,
  repo: 400,
  build: 500_000,
  invoice: 0,
  employee: 3000,
  deal: 20_000,
  user: 3000,
};
const REPORTS = ['sales', 'pipeline', 'revenue', 'churn', 'headcount', 'payroll', 'usage'];

type Role = 'engineer' | 'sales' | 'support' | 'finance' | 'hr' | 'admin';
const ROLES: Record<Role, number> = { engineer: 35, sales: 20, support: 25, finance: 8, hr: 6, admin: 6 };
const ROLE_ENDPOINTS: Record<Role, Partial<Record<keyof typeof E, number>>> = {
  engineer: { repoCommits: 30, build: 25, buildLog: 10, ticket: 15, search: 8, me: 2 },
  sales: { customer: 30, customerOrders: 15, deal: 25, dealUpdate: 8, report: 3, search: 10 },
  support: { ticket: 35, ticketList: 10, ticketComment: 15, customer: 20, order: 12, search: 8 },
  finance: { invoice: 35, report: 15, customer: 10, order: 20, search: 5 },
  hr: { employee: 50, employeeUpdate: 10, report: 5, search: 10 },
  admin: { adminUser: 40, audit: 10, employee: 15, search: 10, build: 10 },
};
/** Median think time between page views (s), and the share of objects that are new to the user. */
const ROLE_PACE: Record<Role, { think: number; newObject: number }> = {
  engineer: { think: 25, newObject: 0.15 },
  sales: { think: 18, newObject: 0.1 },
  support: { think: 12, newObject: 0.3 },
  finance: { think: 20, newObject: 0.2 },
  hr: { think: 22, newObject: 0.1 },
  admin: { think: 15, newObject: 0.2 },
};

const OFFICES = [
  { net: '203.0.113', tz: -5 },
  { net: '198.51.100', tz: 1 },
  { net: '192.0.2', tz: 5.5 },
  { net: '100.70.4', tz: 9 },
];

interface User {
  readonly name: string;
  readonly role: Role;
  readonly tz: number;
  readonly office: string;
  readonly home: string;
  readonly startHour: number;
  laptop: string;
  readonly phone: string | undefined;
  /** Per id kind, the objects this user works with. */
  readonly objects: Map<string, (number | string)[]>;
}

interface ServiceAccount {
  readonly name: string;
  readonly ip: string;
  readonly device: string;
  readonly kind: 'poller' | 'sync' | 'metrics' | 'health';
  readonly period: number;
  readonly jitter: number;
}

export interface GenerateOptions {
  seed: number;
  days: number;
  users: number;
  serviceAccounts: number;
  /** Attack episodes per family (spread over the days after the first). */
  episodes: number;
  families: readonly Family[];
}

export function generate(opts: GenerateOptions): Line[] {
  const rng = random(opts.seed);
  const t = tools(rng);
  const lines: Line[] = [];
  const ip = (net: string): string => `${net}.${t.int(2, 254)}`;
  const randomNet = (first: readonly number[]): string => `${t.pick(first)}.${t.int(0, 255)}.${t.int(0, 255)}`;

  const users: User[] = [];
  for (let i = 0; i < opts.users; i++) {
    const office = t.pick(OFFICES);
    const role = t.weighted(ROLES);
    users.push({
      name: `${role.slice(0, 3)}-${opts.seed}-${i}@corp.example`,
      role,
      tz: office.tz,
      office: office.net,
      home: randomNet([24, 67, 73, 81, 92, 176]),
      startHour: Math.min(11, Math.max(6.5, 8.7 + 0.9 * t.normal())),
      laptop: `dev-${t.hex(12)}`,
      phone: t.chance(0.5) ? `dev-${t.hex(12)}` : undefined,
      objects: new Map(),
    });
  }
  const sas: ServiceAccount[] = [];
  for (let i = 0; i < opts.serviceAccounts; i++) {
    const kind = (['poller', 'sync', 'metrics', 'health'] as const)[i % 4]!;
    sas.push({
      name: `svc-${kind}-${opts.seed}-${i}`,
      ip: `10.20.${i % 4}.${t.int(2, 254)}`,
      device: `cert-${t.hex(12)}`,
      kind,
      period: kind === 'sync' ? 300_000 : kind === 'metrics' ? 60_000 : t.uniform(15_000, 60_000),
      jitter: kind === 'sync' ? 5000 : 1500,
    });
  }

  // Upstream outages: everybody sees 503s for a few minutes.
  const outages: [number, number][] = [];
  for (let d = 0; d < opts.days; d++) {
    for (let k = 0; k < t.int(0, 2); k++) {
      const s = EPOCH + d * DAY + t.uniform(0, DAY);
      outages.push([s, s + t.uniform(1, 6) * MIN]);
    }
  }
  const inOutage = (ts: number): boolean => outages.some(([a, b]) => ts >= a && ts < b);

  function objectFor(u: User, ep: Endpoint, newShare: number): string | number | undefined {
    if (ep.ids === undefined) return undefined;
    let list = u.objects.get(ep.ids);
    if (list === undefined) {
      list = [];
      const n = ep.ids === 'repo' ? t.int(3, 12) : t.int(20, 120);
      for (let k = 0; k < n; k++) list.push(ep.ids === 'invoice' ? t.uuid() : t.int(1, ID_SPACE[ep.ids]));
      u.objects.set(ep.ids, list);
    }
    if (t.chance(newShare) && ep.ids !== 'repo') {
      const fresh = ep.ids === 'invoice' ? t.uuid() : t.int(1, ID_SPACE[ep.ids]);
      list.unshift(fresh); // new work is hot for a while
      if (list.length > 200) list.pop();
      return fresh;
    }
    return list[t.zipf(list.length)];
  }

  function render(ep: Endpoint, id: string | number | undefined): string {
    return ep.path
      .replace('{id}', String(id ?? t.int(1, 1000)))
      .replace('{uuid}', ep.ids === 'invoice' ? String(id) : t.uuid())
      .replace('{name}', t.pick(REPORTS))
      .replace('?q=', `?q=${t.hex(4)}`);
  }

  function emit(base: Omit<Line, 'status' | 'bytes' | 'label'> & { label?: Line['label'] }, ep: Endpoint, isNew: boolean): Line {
    let status = 200;
    if (inOutage(base.ts) && t.chance(0.4)) status = 503;
    else if (t.chance(0.001)) status = 500;
    else if (isNew && t.chance(0.03)) status = 404;
    else if (t.chance(0.002)) status = 403;
    const bytes = status === 200 ? Math.round(t.lognormal(ep.bytes, ep.sigma)) : status === 403 ? 180 : 150;
    const line: Line = { ...base, status, bytes, label: base.label ?? 'benign' };
    if (status === 403) line.denied = true;
    lines.push(line);
    return line;
  }

  /** One page view: a burst of 1–6 API calls within ~300 ms. Returns the end time. */
  function pageView(u: User, ts: number, device: string, addr: string, fp: boolean): number {
    const pace = ROLE_PACE[u.role];
    const main = E[t.weighted(ROLE_ENDPOINTS[u.role] as Record<keyof typeof E, number>)] as Endpoint;
    const calls: Endpoint[] = [main];
    if (t.chance(0.4)) calls.push(E.notifications);
    if (t.chance(0.05)) calls.push(E.me);
    if (main.ids !== undefined && t.chance(0.3)) calls.push(main === E.customer ? E.customerOrders : main);
    let at = ts;
    let firstFp = fp;
    for (const ep of calls) {
      const id = objectFor(u, ep, pace.newObject);
      const list = ep.ids === undefined ? undefined : u.objects.get(ep.ids);
      const isNew = list !== undefined && list[0] === id;
      const line = emit({ ts: Math.round(at), principal: u.name, device, ip: addr, method: ep.method, path: render(ep, id) }, ep, isNew);
      if (firstFp) {
        line.fingerprintChanged = true;
        firstFp = false;
      }
      at += t.uniform(5, 120);
    }
    return at;
  }

  /** A stretch of work: page views separated by think times, until `end`. */
  function session(u: User, start: number, end: number, device: string, addr: () => string, fpAtStart: boolean): void {
    let ts = start;
    let fp = fpAtStart;
    if (t.chance(0.05)) {
      // An expired token: one refused request, then the client refreshes it. As the gateway
      // records it: no verified principal, the token's subject as claimed.
      emit({ ts: Math.round(ts), principal: '', claimedPrincipal: u.name, device, ip: addr(), method: 'GET', path: '/api/v1/me', authFailure: true }, E.me, false).status = 401;
      lines[lines.length - 1]!.bytes = 120;
      ts += t.uniform(500, 3000);
    }
    const think = ROLE_PACE[u.role].think;
    while (ts < end) {
      ts = pageView(u, ts, device, addr(), fp);
      fp = false;
      ts += t.lognormal(think, 0.9) * 1000;
      if (t.chance(0.04)) ts += t.uniform(5, 40) * MIN; // a meeting, a coffee
    }
  }

  for (const u of users) {
    let travelUntil = -1;
    let travelNet = '';
    for (let d = 0; d < opts.days; d++) {
      const dayStart = EPOCH + d * DAY - u.tz * HOUR; // local midnight in UTC
      const weekday = (d % 7) < 5;
      if (t.chance(0.004)) u.laptop = `dev-${t.hex(12)}`; // a replaced laptop
      if (t.chance(0.01)) {
        travelUntil = dayStart + t.int(1, 3) * DAY;
        travelNet = randomNet([37, 62, 85, 109, 151]);
      }
      const fpToday = t.chance(0.01);
      const traveling = dayStart < travelUntil;
      const where = traveling ? 'travel' : t.weighted({ office: 60, home: 30, vpn: 10 });
      const addr = (): string =>
        where === 'office' ? ip(u.office) : where === 'home' ? `${u.home}.${(u.name.length * 7) % 250 + 2}` : where === 'travel' ? ip(travelNet) : ip(`100.64.${t.int(1, 4)}`);
      if (weekday || t.chance(0.05)) {
        const start = dayStart + (u.startHour + 0.5 * t.normal()) * HOUR;
        const lunch = start + t.uniform(3.5, 4.5) * HOUR;
        const end = start + t.uniform(7.5, 9.5) * HOUR;
        if (weekday) {
          session(u, start, lunch, u.laptop, addr, fpToday);
          session(u, lunch + t.uniform(30, 60) * MIN, end, u.laptop, addr, false);
        } else session(u, start, start + t.uniform(0.5, 2) * HOUR, u.laptop, addr, false);
        if (t.chance(0.12)) {
          const es = dayStart + t.uniform(19, 22.5) * HOUR; // evening catch-up from home
          session(u, es, es + t.uniform(15, 60) * MIN, u.laptop, () => `${u.home}.${(u.name.length * 7) % 250 + 2}`, false);
        }
      }
      if (u.phone !== undefined) {
        // Phone: short sessions on carrier networks (a new /24 almost every time).
        for (let k = 0; k < t.int(0, 3); k++) {
          const ps = dayStart + t.uniform(7, 22) * HOUR;
          const carrier = ip(randomNet([172, 174, 208]));
          session(u, ps, ps + t.uniform(1, 6) * MIN, u.phone, () => carrier, false);
        }
      }
    }
  }

  let syncCursor = t.int(100_000, 800_000);
  for (const sa of sas) {
    for (let ts = EPOCH + t.uniform(0, sa.period); ts < EPOCH + opts.days * DAY; ts += sa.period + t.uniform(-sa.jitter, sa.jitter)) {
      const base = { principal: sa.name, device: sa.device, ip: sa.ip };
      if (sa.kind === 'poller') emit({ ...base, ts: Math.round(ts), method: 'GET', path: E.queue.path }, E.queue, false);
      else if (sa.kind === 'metrics') emit({ ...base, ts: Math.round(ts), method: 'POST', path: E.metrics.path }, E.metrics, false);
      else if (sa.kind === 'health') emit({ ...base, ts: Math.round(ts), method: 'GET', path: E.health.path }, E.health, false);
      else {
        // A sync job reads the orders changed since its last run: ids in sequence, 5/s.
        const n = t.int(10, 80);
        for (let k = 0; k < n; k++) {
          syncCursor += t.chance(0.8) ? 1 : t.int(2, 5);
          emit({ ...base, ts: Math.round(ts + k * t.uniform(150, 250)), method: 'GET', path: `/api/v1/orders/${syncCursor}` }, E.syncOrders, true);
        }
      }
    }
  }

  // ---- Attack episodes, after WARMUP_DAYS of history. ----
  const episodes: { victim: string; start: number; end: number }[] = [];
  const span = (opts.days - WARMUP_DAYS) * DAY;
  for (const family of opts.families) {
    for (let k = 0; k < opts.episodes; k++) {
      const start = EPOCH + WARMUP_DAYS * DAY + ((k + t.uniform(0.1, 0.9)) / opts.episodes) * span * 0.98;
      const ep = attack(family, start);
      if (ep !== undefined) episodes.push(ep);
    }
  }

  function localHour(u: User, ts: number): number {
    return (((ts / HOUR + u.tz) % 24) + 24) % 24;
  }

  /** A time in [from, from + 1 day) when the user is at work (local weekday hours). */
  function workTime(u: User, from: number): number {
    for (let ts = from; ; ts += 10 * MIN) {
      const h = localHour(u, ts);
      const weekday = Math.floor((ts + u.tz * HOUR - EPOCH) / DAY) % 7 < 5;
      if (weekday && h > u.startHour + 1 && h < u.startHour + 6) return ts;
      if (ts > from + 7 * DAY) return from;
    }
  }

  function attack(family: Family, start: number): { victim: string; start: number; end: number } | undefined {
    const label = family;
    const u = t.pick(users);
    const knownAddr = `${u.office}.${t.int(2, 254)}`;
    const push = (l: Omit<Line, 'label'>): void => {
      lines.push({ ...l, label });
    };
    switch (family) {
      case 'flood': {
        const s = workTime(u, start);
        const rate = t.uniform(8, 60);
        const n = Math.round(rate * t.uniform(20, 90));
        const eps = Object.keys(ROLE_ENDPOINTS[u.role]) as (keyof typeof E)[];
        const targets = [E[t.pick(eps)], E[t.pick(eps)]] as Endpoint[];
        let ts = s;
        for (let i = 0; i < n; i++) {
          const ep = t.pick(targets);
          const id = objectFor(u, ep, 0);
          push({ ts: Math.round(ts), principal: u.name, device: u.laptop, ip: knownAddr, method: ep.method, path: render(ep, id), status: 200, bytes: Math.round(t.lognormal(ep.bytes, ep.sigma)) });
          ts += t.lognormal(1000 / rate, 0.5);
        }
        return { victim: u.name, start: s, end: ts };
      }
      case 'credential_stuffing': {
        const net = randomNet([45, 91, 185, 193]);
        const n = t.int(80, 400);
        const rate = t.uniform(0.5, 5);
        let ts = start;
        for (let i = 0; i < n; i++) {
          const name = t.chance(0.3) ? t.pick(users).name : `${t.pick(['john', 'anna', 'admin', 'test', 'mike', 'sara'])}${t.int(1, 9999)}@corp.example`;
          push({ ts: Math.round(ts), principal: '', claimedPrincipal: name, device: '', ip: ip(net), method: 'GET', path: '/api/v1/me', status: 401, bytes: 120, authFailure: true });
          ts += t.lognormal(1000 / rate, 0.7);
        }
        return undefined; // no single victim principal
      }
      case 'enumeration': {
        const s = workTime(u, start);
        const rate = t.uniform(1, 8);
        const n = t.int(300, 1500);
        let id = t.int(1000, 60_000);
        let ts = s;
        for (let i = 0; i < n; i++) {
          id += t.chance(0.85) ? 1 : 2;
          const miss = t.chance(0.1);
          push({ ts: Math.round(ts), principal: u.name, device: u.laptop, ip: knownAddr, method: 'GET', path: `/api/v1/customers/${id}`, status: miss ? 404 : 200, bytes: miss ? 150 : Math.round(t.lognormal(2500, 0.4)) });
          ts += t.lognormal(1000 / rate, 0.4);
        }
        return { victim: u.name, start: s, end: ts };
      }
      case 'slow_exfiltration': {
        const s = workTime(u, start);
        const end = s + t.uniform(1, 3) * HOUR;
        let ts = s;
        while (ts < end) {
          push({ ts: Math.round(ts), principal: u.name, device: u.laptop, ip: knownAddr, method: 'GET', path: `/api/v1/customers/${t.int(1, ID_SPACE.customer)}/documents/${t.uuid()}`, status: 200, bytes: Math.round(t.lognormal(1_500_000, 0.7)) });
          ts += t.uniform(20, 90) * 1000;
        }
        return { victim: u.name, start: s, end };
      }
      case 'stolen_token': {
        const device = `dev-${t.hex(12)}`;
        const net = randomNet([5, 31, 46, 89, 103, 141]);
        const n = t.int(50, 300);
        const sensitive = [E.customer, E.customerOrders, E.invoice, E.employee, E.adminUser, E.report, E.search] as Endpoint[];
        let ts = start;
        for (let i = 0; i < n; i++) {
          const ep = t.pick(sensitive);
          const denied = ep === E.adminUser && u.role !== 'admin';
          const id = ep.ids === 'invoice' ? t.uuid() : ep.ids === undefined ? undefined : t.int(1, ID_SPACE[ep.ids]);
          const line: Omit<Line, 'label'> = { ts: Math.round(ts), principal: u.name, device, ip: ip(net), method: 'GET', path: render(ep, id), status: denied ? 403 : 200, bytes: denied ? 180 : Math.round(t.lognormal(ep.bytes, ep.sigma)) };
          if (denied) line.denied = true;
          push(line);
          ts += t.lognormal(4000, 0.8);
        }
        return { victim: u.name, start, end: ts };
      }
      case 'off_hours': {
        // The user's own laptop and home line, at 1–5 am local: an insider, or a session taken over at night.
        let s = start;
        while (!(localHour(u, s) >= 1 && localHour(u, s) < 4.5)) s += 10 * MIN;
        const end = s + t.uniform(20, 60) * MIN;
        const addr = `${u.home}.${(u.name.length * 7) % 250 + 2}`;
        let ts = s;
        while (ts < end) {
          const main = E[t.weighted(ROLE_ENDPOINTS[u.role] as Record<keyof typeof E, number>)] as Endpoint;
          const id = objectFor(u, main, 0.5);
          push({ ts: Math.round(ts), principal: u.name, device: u.laptop, ip: addr, method: 'GET', path: render(main, id), status: 200, bytes: Math.round(t.lognormal(main.bytes, main.sigma)) });
          ts += t.lognormal(6000, 0.8);
        }
        return { victim: u.name, start: s, end };
      }
      case 'sa_drift': {
        const sa = t.pick(sas);
        const end = start + t.uniform(10, 30) * MIN;
        const reads = [E.customer, E.employee, E.invoice, E.deal] as Endpoint[];
        let ts = start;
        while (ts < end) {
          const ep = t.pick(reads);
          const id = ep.ids === 'invoice' ? t.uuid() : t.int(1, ID_SPACE[ep.ids!]);
          push({ ts: Math.round(ts), principal: sa.name, device: sa.device, ip: sa.ip, method: 'GET', path: render(ep, id), status: 200, bytes: Math.round(t.lognormal(ep.bytes, ep.sigma)) });
          ts += t.lognormal(2000, 0.6);
        }
        return { victim: sa.name, start, end };
      }
    }
  }

  lines.sort((a, b) => a.ts - b.ts);
  for (const l of lines) {
    if (l.label !== 'benign') continue;
    for (const e of episodes) if (l.principal === e.victim && l.ts >= e.start && l.ts <= e.end + 10 * MIN) l.context = 'after-attack';
  }
  return lines;
}

export async function writeLines(lines: readonly Line[], file: string): Promise<void> {
  const out = createWriteStream(file);
  let buf = '';
  for (const l of lines) {
    buf += JSON.stringify(l) + '\n';
    if (buf.length > 1 << 20) {
      if (!out.write(buf)) await new Promise<void>((r) => out.once('drain', () => r()));
      buf = '';
    }
  }
  out.end(buf);
  await new Promise<void>((r) => out.once('finish', () => r()));
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '1' },
      days: { type: 'string', default: '4' },
      users: { type: 'string', default: '150' },
      'service-accounts': { type: 'string', default: '12' },
      episodes: { type: 'string', default: '3' },
      families: { type: 'string', default: FAMILIES.join(',') },
      out: { type: 'string' },
    },
  });
  if (values.out === undefined) throw new Error('--out FILE is required');
  const families = values.families.split(',').filter((f) => f !== '') as Family[];
  for (const f of families) if (!FAMILIES.includes(f)) throw new Error(`unknown family ${f}`);
  const lines = generate({
    seed: Number(values.seed),
    days: Number(values.days),
    users: Number(values.users),
    serviceAccounts: Number(values['service-accounts']),
    episodes: Number(values.episodes),
    families,
  });
  await writeLines(lines, values.out);
  const counts: Record<string, number> = {};
  for (const l of lines) counts[l.label] = (counts[l.label] ?? 0) + 1;
  console.log(JSON.stringify({ out: values.out, lines: lines.length, labels: counts }));
}
