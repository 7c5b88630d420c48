// The risk model's feature extractor: pure, no I/O, no clock of its own (time comes in each
// event), shared by the gateway (risk stage and response hook) and the offline tools
// (models/train/*), so a trace replayed offline yields the very vectors the gateway scored.
//
// State. One Float64Array per principal (the trace's `principal`, i.e. the token subject),
// held in an LRU with a fixed maximum: O(1) work per event (a few fixed-size scans of at most
// 32 slots) and a bounded footprint (BYTES_PER_PRINCIPAL below is measured by features.test.ts).
// The device is an attribute of that state, not part of its key: keyed by subject + device,
// a stolen token on a new device would start from an empty history and look like a new user
// rather than like this user on a device nobody has seen.
// Windows (1 s, 10 s, 1 min, 10 min) are exponentially decayed counters (time constant = the
// window), which need no ring of buckets and cost one Math.exp per window per event. Baselines
// are slow EWMAs weighted by *active* time (gaps capped at 60 s), so that a night's silence
// does not reset them and a one-minute flood moves them by ~1.6 % only.
//
// Order of operations for one trace line (request and response on one line), used alike by
// the gateway and by the offline tools (see replayLine):
//   1. observe(request)          — folds in the request; returns the features the line is scored on
//   2. score that vector          — the gateway scores before proxying, so the line's own status
//                                   and bytes cannot be known yet
//   3. observeResponse(response)  — folds in status, bytes and the authz deny flag
// "Folds in" means: window counters include this request; novelty flags (new template, new
// id, new network, new device, hour unusualness) compare it with the history *before* it.
// authFailure and fingerprintChanged are request-time facts (authn and device trust run before
// the risk stage); status, bytes and denied are response-time facts.
//
// Unauthenticated failures. A request with authFailure whose principal has no state yet does not
// create one (nor does the empty principal): per-principal features come from a blank scratch
// state and only the cross-principal counters learn from it. Otherwise a credential-stuffing run
// of 10,000 made-up names would evict the real users' histories from the LRU.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';

/** Request-time facts of one request (the trace line contract, without the response fields). */
export interface RequestEvent {
  /** Epoch milliseconds. */
  readonly ts: number;
  /** Token subject; '' when the request carried no verifiable identity. */
  readonly principal: string;
  /** Device id (key thumbprint); '' when unbound. */
  readonly device: string;
  readonly ip: string;
  readonly method: string;
  /** Request target; query and fragment are ignored. */
  readonly path: string;
  /** Authentication failed (bad, expired or revoked token). */
  readonly authFailure?: boolean;
  /**
   * A failed authentication without a verified principal (`principal` ''): the subject its
   * credential claimed, unverified. It only counts as one more account failing from the
   * source network; it never touches that principal's history, which a forged token could
   * otherwise fill with failures.
   */
  readonly claimedPrincipal?: string;
  /** Device trust saw the passive client traits change (DeviceContext.fingerprintChanged). */
  readonly fingerprintChanged?: boolean;
}

/** Response-time facts of one request. */
export interface ResponseEvent {
  readonly ts: number;
  readonly principal: string;
  readonly status: number;
  /** Bytes sent to the client (body). */
  readonly bytes: number;
  /** The policy set denied the request. */
  readonly denied?: boolean;
}

/** One trace line: a request and its response (the `ztgw model score` input contract). */
export interface TraceEvent extends RequestEvent {
  readonly status: number;
  readonly bytes: number;
  readonly denied?: boolean;
  /**
   * The policy refused the request while it was flagged: its response is not folded in (the
   * gateway's pipeline/risk.ts says why), so the replay leaves it out too.
   */
  readonly refusedOnRisk?: boolean;
}

// ---- The feature specification: names, order and transforms, defined once. ----

interface FeatureDef {
  readonly name: string;
  readonly description: string;
}

/** Window lengths in seconds (time constants of the decayed counters). */
export const WINDOWS_S = [1, 10, 60, 600] as const;

const DEFS = [
  ['rate_1s', 'log1p(requests per minute), 1 s decayed window'],
  ['rate_10s', 'log1p(requests per minute), 10 s decayed window'],
  ['rate_1m', 'log1p(requests per minute), 1 min decayed window'],
  ['rate_10m', 'log1p(requests per minute), 10 min decayed window'],
  ['rate_ratio_10s', 'ln((rate_10s + 1/min) / (own baseline of rate_10s + 1/min)), clipped to [-6, 8]'],
  ['rate_ratio_1m', 'same for the 1 min window'],
  ['rate_ratio_10m', 'same for the 10 min window'],
  ['err4xx_1m', '4xx responses / (responses + 0.5), 1 min window'],
  ['err4xx_10m', '4xx responses / (responses + 0.5), 10 min window'],
  ['err5xx_1m', '5xx responses / (responses + 0.5), 1 min window'],
  ['err5xx_10m', '5xx responses / (responses + 0.5), 10 min window'],
  ['deny_1m', 'policy denies / (responses + 0.5), 1 min window'],
  ['deny_10m', 'policy denies / (responses + 0.5), 10 min window'],
  ['tpl_distinct_1m', 'log1p(distinct path templates, ids and UUIDs collapsed), 1 min window'],
  ['tpl_distinct_10m', 'log1p(distinct path templates), 10 min window'],
  ['tpl_novelty_now', 'template never seen by this principal: -ln(own rate of new templates + 0.01), else 0'],
  ['tpl_novelty_10m', 'mean tpl_novelty_now per request, 10 min window'],
  ['id_novelty_now', 'object id not among the last 32 of this principal: -ln(own rate of new ids + 0.01), else 0'],
  ['id_novelty_1m', 'mean id_novelty_now per request, 1 min window'],
  ['id_novelty_10m', 'mean id_novelty_now per request, 10 min window'],
  ['id_new_10m', 'share of requests with a new object id, 10 min window'],
  ['seq_id_1m', 'share of requests whose numeric id is the previous one ±1..3 on the same template, 1 min window'],
  ['seq_id_10m', 'same, 10 min window'],
  ['write_1m', 'share of POST/PUT/PATCH/DELETE requests, 1 min window'],
  ['bytes_1m', 'log1p(bytes to client per second), 1 min window'],
  ['bytes_10m', 'log1p(bytes to client per second), 10 min window'],
  ['bytes_ratio_10m', 'ln((bytes_10m rate + 100) / (own baseline + 100)), clipped to [-6, 10]'],
  ['resp_size_z', 'EWMA (0.3) of the z-score of ln(1 + response bytes) against own history, clipped to [-5, 10]'],
  ['resp_size_z_slow', 'EWMA (0.05) of the same z-score'],
  ['burstiness', '(sd - mean) / (sd + mean) of inter-arrival times (EWMA 0.1, gaps capped at 60 s)'],
  ['ia_log_mean', 'ln(EWMA inter-arrival seconds + 0.001)'],
  ['dt_log_now', 'ln(1 + seconds since the previous request of this principal), capped at 1 day'],
  ['ip_new', '1 when the IP is not among the last 6 of this principal'],
  ['net_new', '1 when the /24 (IPv4) or /48 (IPv6) is not among the last 6 of this principal'],
  ['net_age', 'log1p(hours since this network was first seen for this principal)'],
  ['net_new_10m', 'share of requests from networks first seen < 10 min before, 10 min window'],
  ['device_new', '1 when the device is not among the last 4 of this principal'],
  ['device_age', 'log1p(hours since this device was first seen for this principal)'],
  ['device_new_10m', 'share of requests from devices first seen < 10 min before, 10 min window'],
  ['fp_changed_now', '1 when device trust reports a fingerprint change'],
  ['fp_changed_10m', 'share of requests with a fingerprint change, 10 min window'],
  ['hour_unusual', '-ln((d(h) + (d(h-1) + d(h+1)) / 2 + 0.5) / (2 max_k d(k) + 1)), d(k) = earlier days active in UTC hour k; 0 while max_k d(k) < 2'],
  ['hour_gap', 'circular distance in hours to the nearest UTC hour active on >= max(1, max_k d(k) / 5) earlier days; 0 while max_k d(k) < 2'],
  ['principal_events', 'log1p(requests seen from this principal)'],
  ['principal_age', 'log1p(hours since this principal was first seen)'],
  ['auth_fail_now', '1 when this request failed authentication'],
  ['auth_fail_10m', 'share of own requests failing authentication, 10 min window'],
  ['net_fail_1m', 'log1p(authentication failures from this network), 1 min window, all principals'],
  ['net_fail_10m', 'log1p(authentication failures from this network), 10 min window'],
  ['net_fail_accounts_10m', 'log1p(distinct principals, or subjects claimed by failed credentials, failing from this network), 10 min window'],
  ['gw_fail_1m', 'failed requests only: log1p(authentication failures, gateway-wide), 1 min window; else 0'],
  ['gw_fail_share_1m', 'failed requests only: gateway-wide failures / (requests + 1), 1 min window; else 0'],
] as const satisfies readonly (readonly [string, string])[];

export type FeatureName = (typeof DEFS)[number][0];

/** Feature names in vector order, with what each one means. */
export const FEATURES: readonly FeatureDef[] = Object.freeze(DEFS.map(([name, description]) => Object.freeze({ name, description })));
export const FEATURE_NAMES: readonly FeatureName[] = Object.freeze(DEFS.map(([name]) => name));
export const FEATURE_COUNT = DEFS.length;

/**
 * Features that describe one aspect of behaviour, for the model to count once: the score takes
 * each group's most anomalous feature, so a flood (seven rate features at once) is not seven
 * times the evidence of a night session (two hour features), and benign noise spread over many
 * features does not add up (models/train/train.py).
 */
export const FEATURE_GROUPS = Object.freeze({
  rate: ['rate_1s', 'rate_10s', 'rate_1m', 'rate_10m', 'rate_ratio_10s', 'rate_ratio_1m', 'rate_ratio_10m'],
  errors: ['err4xx_1m', 'err4xx_10m', 'err5xx_1m', 'err5xx_10m', 'deny_1m', 'deny_10m'],
  paths: ['tpl_distinct_1m', 'tpl_distinct_10m', 'tpl_novelty_now', 'tpl_novelty_10m', 'write_1m'],
  ids: ['id_novelty_now', 'id_novelty_1m', 'id_novelty_10m', 'id_new_10m', 'seq_id_1m', 'seq_id_10m'],
  bytes: ['bytes_1m', 'bytes_10m', 'bytes_ratio_10m', 'resp_size_z', 'resp_size_z_slow'],
  timing: ['burstiness', 'ia_log_mean', 'dt_log_now'],
  network: ['ip_new', 'net_new', 'net_age', 'net_new_10m'],
  device: ['device_new', 'device_age', 'device_new_10m', 'fp_changed_now', 'fp_changed_10m'],
  hour: ['hour_unusual', 'hour_gap'],
  history: ['principal_events', 'principal_age'],
  auth: ['auth_fail_now', 'auth_fail_10m', 'net_fail_1m', 'net_fail_10m', 'net_fail_accounts_10m', 'gw_fail_1m', 'gw_fail_share_1m'],
} as const satisfies Record<string, readonly FeatureName[]>);

/**
 * Features whose high values mean familiar or idle, not suspicious (a network known for weeks,
 * a night's pause before the first request of the day): the model's per-feature tail term
 * leaves them out, its autoencoder still sees them (measured: counted as tail surprise, every
 * user's first request of the morning scored near the flag threshold).
 */
export const NOT_SUSPICIOUS_WHEN_HIGH: readonly FeatureName[] = Object.freeze(['dt_log_now', 'ia_log_mean', 'net_age', 'device_age', 'principal_events', 'principal_age']);

/** Bump when a transform, constant or order changes: the hash below changes with it. */
const SPEC_VERSION = 5;

/** The spec the model's metadata must repeat; its hash is what the gateway compares. */
export const FEATURE_SPEC = Object.freeze({
  version: SPEC_VERSION,
  windowsS: WINDOWS_S,
  features: FEATURES,
  groups: FEATURE_GROUPS,
  notSuspiciousWhenHigh: NOT_SUSPICIOUS_WHEN_HIGH,
  order: 'observe(request) → score → observeResponse(response)',
});
export const FEATURE_SPEC_HASH: string = createHash('sha256').update(JSON.stringify(FEATURE_SPEC)).digest('hex').slice(0, 16);

const F = Object.fromEntries(FEATURE_NAMES.map((n, i) => [n, i])) as Record<FeatureName, number>;

// ---- Per-principal state layout (offsets into one Float64Array). ----

const TPL_SLOTS = 16;
const ID_SLOTS = 32;
const NET_SLOTS = 6;
const IP_SLOTS = 6;
const DEV_SLOTS = 4;

let next = 0;
const at = (n = 1): number => ((next += n), next - n);
const S = {
  firstTs: at(),
  lastTs: at(),
  events: at(),
  req: at(4), // per window
  baseRate: at(4), // per window (index 0 unused)
  respTs: at(),
  resp1m: at(),
  resp10m: at(),
  e4_1m: at(),
  e4_10m: at(),
  e5_1m: at(),
  e5_10m: at(),
  deny1m: at(),
  deny10m: at(),
  bytes1m: at(),
  bytes10m: at(),
  baseBytes: at(),
  tplDist1m: at(),
  tplDist10m: at(),
  tplNov10m: at(),
  baseNewTpl: at(),
  idNov1m: at(),
  idNov10m: at(),
  idNew10m: at(),
  baseNewId: at(),
  seq1m: at(),
  seq10m: at(),
  write1m: at(),
  lastIdNum: at(),
  lastIdTpl: at(),
  rsMean: at(),
  rsVar: at(),
  rsN: at(),
  rsZ: at(),
  rsZSlow: at(),
  iaMean: at(),
  iaSq: at(),
  newNet10m: at(),
  newDev10m: at(),
  fp10m: at(),
  authFail10m: at(),
  hourDays: at(24), // per UTC hour: days on which this principal was active in it
  hourLast: at(24), // per UTC hour: the last request in it
  tpl: at(TPL_SLOTS),
  tplLast: at(TPL_SLOTS),
  ids: at(ID_SLOTS),
  idPos: at(),
  net: at(NET_SLOTS),
  netFirst: at(NET_SLOTS),
  netLast: at(NET_SLOTS),
  ip: at(IP_SLOTS),
  ipLast: at(IP_SLOTS),
  dev: at(DEV_SLOTS),
  devFirst: at(DEV_SLOTS),
  devLast: at(DEV_SLOTS),
} as const;
const STATE_LEN = next;

// Cross-principal state per source network.
const N_LAST = 0;
const N_FAIL1M = 1;
const N_FAIL10M = 2;
const N_ACCT10M = 3;
const NET_STATE_LEN = 4;

/** Baseline time constant (active time): an hour of activity. */
const BASE_TAU_S = 3600;
/** Gaps longer than this count as this much active time (see the header). */
const ACTIVE_GAP_CAP_S = 60;
/** Per-request EWMA weight of the rates of new templates and new ids. */
const NOVELTY_ALPHA = 0.005;
const HOUR_MS = 3_600_000;
/** Two requests in one UTC hour bucket less than this apart are on the same day. */
const DAY_PART_MS = 12 * HOUR_MS;
/** Earlier active days needed before the hour features say anything. */
const MIN_HOUR_DAYS = 2;

export interface FeatureExtractorOptions {
  /** Principals kept (LRU); measured ~2 KB each (test/bench/risk-micro.ts), so 20,000 ≈ 40 MB. */
  maxPrincipals?: number;
  /** Source networks kept for the cross-principal failure counters. */
  maxNetworks?: number;
}

export interface FeatureExtractor {
  /**
   * Folds in a request and writes its FEATURE_COUNT features into `out` at `offset` (by
   * default an internal buffer, overwritten by the next call). Returns the array written to.
   */
  observe(event: RequestEvent, out?: Float32Array, offset?: number): Float32Array;
  /** Folds in a response; a principal unknown (never seen, or evicted since) is ignored. */
  observeResponse(event: ResponseEvent): void;
  /** Principals currently held. */
  readonly size: number;
}

export function createFeatureExtractor(opts: FeatureExtractorOptions = {}): FeatureExtractor {
  const principals = new LRUCache<string, Float64Array>({ max: opts.maxPrincipals ?? 20_000 });
  const networks = new LRUCache<string, Float64Array>({ max: opts.maxNetworks ?? 50_000 });
  // Last failure time per (network, principal): counts distinct failing accounts per network.
  const failingAccounts = new LRUCache<string, number>({ max: opts.maxNetworks ?? 50_000 });
  const scratch = new Float64Array(STATE_LEN);
  const own = new Float32Array(FEATURE_COUNT);
  const path = { tpl: 0, idHash: 0, idNum: Number.NaN };
  const decay = new Float64Array(4);
  const days = new Float64Array(24); // earlier active days per UTC hour, for the request at hand
  // Gateway-wide counters.
  let gwLast = 0;
  let gwFail1m = 0;
  let gwReq1m = 0;

  function observe(ev: RequestEvent, out: Float32Array = own, o = 0): Float32Array {
    const ts = ev.ts;
    const failed = ev.authFailure === true;
    const netKey = networkOf(ev.ip);

    // Gateway-wide and per-network counters (every request, known principal or not).
    const gd = Math.exp(-Math.max(0, ts - gwLast) / 60_000);
    gwLast = Math.max(gwLast, ts);
    gwReq1m = gwReq1m * gd + 1;
    gwFail1m = gwFail1m * gd + (failed ? 1 : 0);
    let ns = networks.get(netKey);
    if (ns === undefined && failed) {
      ns = new Float64Array(NET_STATE_LEN);
      ns[N_LAST] = ts;
      networks.set(netKey, ns);
    }
    if (ns !== undefined) {
      const dtn = Math.max(0, ts - ns[N_LAST]!) / 1000;
      ns[N_LAST] = Math.max(ns[N_LAST]!, ts);
      const d1 = Math.exp(-dtn / 60);
      const d10 = Math.exp(-dtn / 600);
      ns[N_FAIL1M] = ns[N_FAIL1M]! * d1 + (failed ? 1 : 0);
      ns[N_FAIL10M] = ns[N_FAIL10M]! * d10 + (failed ? 1 : 0);
      ns[N_ACCT10M] = ns[N_ACCT10M]! * d10;
      if (failed) {
        const key = `${netKey}|${ev.principal !== '' ? ev.principal : (ev.claimedPrincipal ?? '')}`;
        const lastFail = failingAccounts.get(key);
        if (lastFail === undefined || ts - lastFail > 600_000) ns[N_ACCT10M] = ns[N_ACCT10M]! + 1;
        failingAccounts.set(key, ts);
      }
    }

    // The principal's state: stored, or a blank scratch for an unknown failing one.
    let s = ev.principal === '' ? undefined : principals.get(ev.principal);
    if (s === undefined) {
      if (failed || ev.principal === '') {
        s = scratch;
        s.fill(0);
      } else {
        s = new Float64Array(STATE_LEN);
        principals.set(ev.principal, s);
      }
      initState(s, ts);
    }

    const first = s[S.events] === 0;
    const dtMs = first ? 0 : Math.max(0, ts - s[S.lastTs]!);
    const dt = dtMs / 1000;
    for (let w = 0; w < 4; w++) decay[w] = Math.exp(-dt / WINDOWS_S[w]!);
    const d1m = decay[2]!;
    const d10m = decay[3]!;

    // Baselines learn from the rates *before* this request, weighted by active time.
    const active = Math.min(dt, ACTIVE_GAP_CAP_S);
    const baseAlpha = first ? 0 : 1 - Math.exp(-active / BASE_TAU_S);
    for (let w = 1; w < 4; w++) {
      const rate = ((s[S.req + w]! * decay[w]!) / WINDOWS_S[w]!) * 60;
      s[S.baseRate + w] = s[S.baseRate + w]! + baseAlpha * (rate - s[S.baseRate + w]!);
    }
    const respDt = Math.max(0, ts - s[S.respTs]!) / 1000;
    const rd1m = Math.exp(-respDt / 60);
    const rd10m = Math.exp(-respDt / 600);
    const bytesRateNow = (s[S.bytes10m]! * rd10m) / 600;
    s[S.baseBytes] = s[S.baseBytes]! + baseAlpha * (bytesRateNow - s[S.baseBytes]!);

    // Request counters.
    for (let w = 0; w < 4; w++) s[S.req + w] = s[S.req + w]! * decay[w]! + 1;
    const req1m = s[S.req + 2]!;
    const req10m = s[S.req + 3]!;

    // Inter-arrival burstiness.
    if (!first) {
      const ia = Math.min(dt, ACTIVE_GAP_CAP_S);
      s[S.iaMean] = s[S.iaMean]! + 0.1 * (ia - s[S.iaMean]!);
      s[S.iaSq] = s[S.iaSq]! + 0.1 * (ia * ia - s[S.iaSq]!);
    }
    const iaMean = s[S.iaMean]!;
    const iaSd = Math.sqrt(Math.max(0, s[S.iaSq]! - iaMean * iaMean));

    // Path template, object id, enumeration.
    parsePath(ev.path, path);
    let tplSlot = -1;
    let oldest = 0;
    for (let k = 0; k < TPL_SLOTS; k++) {
      if (s[S.tpl + k] === path.tpl) {
        tplSlot = k;
        break;
      }
      if (s[S.tplLast + k]! < s[S.tplLast + oldest]!) oldest = k;
    }
    const tplNew = tplSlot === -1;
    const tplLastSeen = tplNew ? -Infinity : s[S.tplLast + tplSlot]!;
    if (tplNew) {
      tplSlot = oldest;
      s[S.tpl + tplSlot] = path.tpl;
    }
    s[S.tplLast + tplSlot] = ts;
    s[S.tplDist1m] = s[S.tplDist1m]! * d1m + (ts - tplLastSeen > 60_000 ? 1 : 0);
    s[S.tplDist10m] = s[S.tplDist10m]! * d10m + (ts - tplLastSeen > 600_000 ? 1 : 0);
    const tplNovelty = tplNew ? -Math.log(s[S.baseNewTpl]! + 0.01) : 0;
    s[S.tplNov10m] = s[S.tplNov10m]! * d10m + tplNovelty;
    s[S.baseNewTpl] = s[S.baseNewTpl]! + NOVELTY_ALPHA * ((tplNew ? 1 : 0) - s[S.baseNewTpl]!);

    let idNovelty = 0;
    let idNew = 0;
    let seq = 0;
    if (path.idHash !== 0) {
      let found = false;
      for (let k = 0; k < ID_SLOTS; k++) {
        if (s[S.ids + k] === path.idHash) {
          found = true;
          break;
        }
      }
      if (!found) {
        idNew = 1;
        idNovelty = -Math.log(s[S.baseNewId]! + 0.01);
        const pos = s[S.idPos]!;
        s[S.ids + pos] = path.idHash;
        s[S.idPos] = (pos + 1) % ID_SLOTS;
      }
      if (!Number.isNaN(path.idNum)) {
        const step = path.idNum - s[S.lastIdNum]!;
        if (s[S.lastIdTpl] === path.tpl && step !== 0 && Math.abs(step) <= 3) seq = 1;
        s[S.lastIdNum] = path.idNum;
        s[S.lastIdTpl] = path.tpl;
      }
    }
    // Every request teaches the rate of new ids, with an id or not: a poller that never names an
    // object must find its first object id surprising.
    s[S.baseNewId] = s[S.baseNewId]! + NOVELTY_ALPHA * (idNew - s[S.baseNewId]!);
    s[S.idNov1m] = s[S.idNov1m]! * d1m + idNovelty;
    s[S.idNov10m] = s[S.idNov10m]! * d10m + idNovelty;
    s[S.idNew10m] = s[S.idNew10m]! * d10m + idNew;
    s[S.seq1m] = s[S.seq1m]! * d1m + seq;
    s[S.seq10m] = s[S.seq10m]! * d10m + seq;
    s[S.write1m] = s[S.write1m]! * d1m + (isWrite(ev.method) ? 1 : 0);

    // Networks, IPs, devices: novelty before this request, then remember it.
    const netHash = fnv(netKey, 0, netKey.length, FNV_OFFSET);
    let netSlot = findSlot(s, S.net, NET_SLOTS, netHash);
    const netNew = netSlot < 0;
    if (netNew) netSlot = replaceSlot(s, S.net, S.netLast, NET_SLOTS, netHash, S.netFirst, ts);
    s[S.netLast + netSlot] = ts;
    const netAgeMs = ts - s[S.netFirst + netSlot]!;
    s[S.newNet10m] = s[S.newNet10m]! * d10m + (netAgeMs < 600_000 ? 1 : 0);

    const ipHash = fnv(ev.ip, 0, ev.ip.length, FNV_OFFSET);
    let ipSlot = findSlot(s, S.ip, IP_SLOTS, ipHash);
    const ipNew = ipSlot < 0;
    if (ipNew) ipSlot = replaceSlot(s, S.ip, S.ipLast, IP_SLOTS, ipHash, -1, ts);
    s[S.ipLast + ipSlot] = ts;

    const devHash = fnv(ev.device, 0, ev.device.length, FNV_OFFSET);
    let devSlot = findSlot(s, S.dev, DEV_SLOTS, devHash);
    const devNew = devSlot < 0;
    if (devNew) devSlot = replaceSlot(s, S.dev, S.devLast, DEV_SLOTS, devHash, S.devFirst, ts);
    s[S.devLast + devSlot] = ts;
    const devAgeMs = ts - s[S.devFirst + devSlot]!;
    s[S.newDev10m] = s[S.newDev10m]! * d10m + (devAgeMs < 600_000 ? 1 : 0);

    const fp = ev.fingerprintChanged === true ? 1 : 0;
    s[S.fp10m] = s[S.fp10m]! * d10m + fp;
    s[S.authFail10m] = s[S.authFail10m]! * d10m + (failed ? 1 : 0);

    // Hour of day, in UTC: the histogram learns each principal's own time zone. It counts *days*
    // active in each hour, and only earlier days count: counted in requests, a night session
    // made its own hour usual within minutes (measured: hour_gap was 0 on most lines of the
    // held-out off-hours sessions).
    const hour = Math.floor(ts / HOUR_MS) % 24;
    let maxDays = 0;
    for (let k = 0; k < 24; k++) {
      const d = earlierDays(s, k, ts);
      days[k] = d;
      if (d > maxDays) maxDays = d;
    }
    // Both stay 0 (no opinion) until two earlier days are known: one day of history says little
    // about a person's hours (measured: counting second days in, benign gaps of 5 hours or more
    // were 25 times as common as after two days, which blunted the feature for everyone).
    let hourUnusual = 0;
    let hourGap = 0;
    if (maxDays >= MIN_HOUR_DAYS) {
      const near = days[hour]! + 0.5 * (days[(hour + 23) % 24]! + days[(hour + 1) % 24]!);
      hourUnusual = -Math.log((near + 0.5) / (2 * maxDays + 1));
      // Distance to the nearest hour this principal has been active in on enough earlier days: a
      // first evening at 20:00 next to a working day ending at 18:00 is near; 03:00 is far.
      const floor = Math.max(1, maxDays / 5);
      hourGap = 12;
      for (let k = 0; k <= 12; k++) {
        if (days[(hour + k) % 24]! >= floor || days[(hour + 24 - k) % 24]! >= floor) {
          hourGap = k;
          break;
        }
      }
    }
    if (!(ts - s[S.hourLast + hour]! < DAY_PART_MS)) {
      s[S.hourDays + hour] = s[S.hourDays + hour]! + 1;
      if (s[S.hourDays + hour]! > 64) {
        // Halving keeps the histogram adaptive (a move, a new shift) and its counts bounded.
        for (let k = 0; k < 24; k++) s[S.hourDays + k] = s[S.hourDays + k]! / 2;
      }
    }
    s[S.hourLast + hour] = ts;

    s[S.events] = s[S.events]! + 1;
    s[S.lastTs] = Math.max(s[S.lastTs]!, ts);

    // Response-side counters, decayed to now (they are updated by observeResponse).
    const resp1m = s[S.resp1m]! * rd1m;
    const resp10m = s[S.resp10m]! * rd10m;

    const net = ns;
    const v = out;
    v[o + F.rate_1s] = Math.log1p(s[S.req]! * 60);
    v[o + F.rate_10s] = Math.log1p(s[S.req + 1]! * 6);
    v[o + F.rate_1m] = Math.log1p(req1m);
    v[o + F.rate_10m] = Math.log1p(req10m / 10);
    v[o + F.rate_ratio_10s] = clip(Math.log((s[S.req + 1]! * 6 + 1) / (s[S.baseRate + 1]! + 1)), -6, 8);
    v[o + F.rate_ratio_1m] = clip(Math.log((req1m + 1) / (s[S.baseRate + 2]! + 1)), -6, 8);
    v[o + F.rate_ratio_10m] = clip(Math.log((req10m / 10 + 1) / (s[S.baseRate + 3]! + 1)), -6, 8);
    v[o + F.err4xx_1m] = (s[S.e4_1m]! * rd1m) / (resp1m + 0.5);
    v[o + F.err4xx_10m] = (s[S.e4_10m]! * rd10m) / (resp10m + 0.5);
    v[o + F.err5xx_1m] = (s[S.e5_1m]! * rd1m) / (resp1m + 0.5);
    v[o + F.err5xx_10m] = (s[S.e5_10m]! * rd10m) / (resp10m + 0.5);
    v[o + F.deny_1m] = (s[S.deny1m]! * rd1m) / (resp1m + 0.5);
    v[o + F.deny_10m] = (s[S.deny10m]! * rd10m) / (resp10m + 0.5);
    v[o + F.tpl_distinct_1m] = Math.log1p(s[S.tplDist1m]!);
    v[o + F.tpl_distinct_10m] = Math.log1p(s[S.tplDist10m]!);
    v[o + F.tpl_novelty_now] = tplNovelty;
    v[o + F.tpl_novelty_10m] = s[S.tplNov10m]! / req10m;
    v[o + F.id_novelty_now] = idNovelty;
    v[o + F.id_novelty_1m] = s[S.idNov1m]! / req1m;
    v[o + F.id_novelty_10m] = s[S.idNov10m]! / req10m;
    v[o + F.id_new_10m] = s[S.idNew10m]! / req10m;
    v[o + F.seq_id_1m] = s[S.seq1m]! / req1m;
    v[o + F.seq_id_10m] = s[S.seq10m]! / req10m;
    v[o + F.write_1m] = s[S.write1m]! / req1m;
    v[o + F.bytes_1m] = Math.log1p((s[S.bytes1m]! * rd1m) / 60);
    v[o + F.bytes_10m] = Math.log1p(bytesRateNow);
    v[o + F.bytes_ratio_10m] = clip(Math.log((bytesRateNow + 100) / (s[S.baseBytes]! + 100)), -6, 10);
    v[o + F.resp_size_z] = s[S.rsZ]!;
    v[o + F.resp_size_z_slow] = s[S.rsZSlow]!;
    v[o + F.burstiness] = (iaSd - iaMean) / (iaSd + iaMean + 1e-9);
    v[o + F.ia_log_mean] = Math.log(iaMean + 0.001);
    v[o + F.dt_log_now] = Math.log1p(Math.min(dt, 86_400));
    v[o + F.ip_new] = ipNew ? 1 : 0;
    v[o + F.net_new] = netNew ? 1 : 0;
    v[o + F.net_age] = Math.log1p(netAgeMs / HOUR_MS);
    v[o + F.net_new_10m] = s[S.newNet10m]! / req10m;
    v[o + F.device_new] = devNew ? 1 : 0;
    v[o + F.device_age] = Math.log1p(devAgeMs / HOUR_MS);
    v[o + F.device_new_10m] = s[S.newDev10m]! / req10m;
    v[o + F.fp_changed_now] = fp;
    v[o + F.fp_changed_10m] = s[S.fp10m]! / req10m;
    v[o + F.hour_unusual] = hourUnusual;
    v[o + F.hour_gap] = hourGap;
    v[o + F.principal_events] = Math.log1p(s[S.events]!);
    v[o + F.principal_age] = Math.log1p((ts - s[S.firstTs]!) / HOUR_MS);
    v[o + F.auth_fail_now] = failed ? 1 : 0;
    v[o + F.auth_fail_10m] = s[S.authFail10m]! / req10m;
    v[o + F.net_fail_1m] = net === undefined ? 0 : Math.log1p(net[N_FAIL1M]!);
    v[o + F.net_fail_10m] = net === undefined ? 0 : Math.log1p(net[N_FAIL10M]!);
    v[o + F.net_fail_accounts_10m] = net === undefined ? 0 : Math.log1p(net[N_ACCT10M]!);
    // Other people's failures do not make a successful request risky: the gateway-wide counters
    // describe this request only when it failed too (measured: ungated, every benign request
    // during a credential-stuffing run scored high).
    v[o + F.gw_fail_1m] = failed ? Math.log1p(gwFail1m) : 0;
    v[o + F.gw_fail_share_1m] = failed ? gwFail1m / (gwReq1m + 1) : 0;
    return out;
  }

  function observeResponse(ev: ResponseEvent): void {
    if (ev.principal === '') return;
    // peek: a response does not make a principal more recently used than its request did.
    const s = principals.peek(ev.principal);
    if (s === undefined) return;
    const dt = Math.max(0, ev.ts - s[S.respTs]!) / 1000;
    s[S.respTs] = Math.max(s[S.respTs]!, ev.ts);
    const d1 = Math.exp(-dt / 60);
    const d10 = Math.exp(-dt / 600);
    const st = ev.status;
    const e4 = st >= 400 && st < 500 ? 1 : 0;
    const e5 = st >= 500 ? 1 : 0;
    const den = ev.denied === true ? 1 : 0;
    const bytes = ev.bytes > 0 ? ev.bytes : 0;
    s[S.resp1m] = s[S.resp1m]! * d1 + 1;
    s[S.resp10m] = s[S.resp10m]! * d10 + 1;
    s[S.e4_1m] = s[S.e4_1m]! * d1 + e4;
    s[S.e4_10m] = s[S.e4_10m]! * d10 + e4;
    s[S.e5_1m] = s[S.e5_1m]! * d1 + e5;
    s[S.e5_10m] = s[S.e5_10m]! * d10 + e5;
    s[S.deny1m] = s[S.deny1m]! * d1 + den;
    s[S.deny10m] = s[S.deny10m]! * d10 + den;
    s[S.bytes1m] = s[S.bytes1m]! * d1 + bytes;
    s[S.bytes10m] = s[S.bytes10m]! * d10 + bytes;

    // Response size against own history: z of ln(1 + bytes), then the history learns it.
    const lb = Math.log1p(bytes);
    const n = s[S.rsN]!;
    const sd = Math.sqrt(s[S.rsVar]! + 0.25); // floor: a constant-size service account is not infinitely surprised
    const z = n < 5 ? 0 : clip((lb - s[S.rsMean]!) / sd, -5, 10);
    s[S.rsZ] = s[S.rsZ]! + 0.3 * (z - s[S.rsZ]!);
    s[S.rsZSlow] = s[S.rsZSlow]! + 0.05 * (z - s[S.rsZSlow]!);
    const a = Math.max(0.01, 1 / (n + 1));
    const diff = lb - s[S.rsMean]!;
    s[S.rsMean] = s[S.rsMean]! + a * diff;
    s[S.rsVar] = (1 - a) * (s[S.rsVar]! + a * diff * diff);
    s[S.rsN] = n + 1;
  }

  return {
    observe,
    observeResponse,
    get size() {
      return principals.size;
    },
  };
}

/**
 * Replays one trace line in the documented order: observe the request, let `score` read the
 * features (the row is valid only during the call), then observe the response.
 */
export function replayLine<T>(extractor: FeatureExtractor, line: TraceEvent, score: (features: Float32Array) => T, out?: Float32Array): T {
  const features = extractor.observe(line, out);
  const result = score(features);
  if (line.refusedOnRisk !== true) extractor.observeResponse(line);
  return result;
}

function initState(s: Float64Array, ts: number): void {
  s[S.firstTs] = ts;
  s[S.lastTs] = ts;
  s[S.respTs] = ts;
  // Priors for a principal with no history: about one request a minute, and everything new.
  for (let w = 1; w < 4; w++) s[S.baseRate + w] = 1;
  s[S.baseNewTpl] = 0.5;
  s[S.baseNewId] = 0.5;
  s[S.iaMean] = 10;
  s[S.iaSq] = 100;
  s[S.lastIdNum] = Number.NaN;
  for (let k = 0; k < TPL_SLOTS; k++) s[S.tplLast + k] = -Infinity;
  for (let k = 0; k < 24; k++) s[S.hourLast + k] = -Infinity;
}

/** Days before today on which the principal was active in UTC hour `k`. */
function earlierDays(s: Float64Array, k: number, ts: number): number {
  const days = s[S.hourDays + k]!;
  return ts - s[S.hourLast + k]! < DAY_PART_MS ? Math.max(0, days - 1) : days;
}

function findSlot(s: Float64Array, base: number, n: number, hash: number): number {
  for (let k = 0; k < n; k++) if (s[base + k] === hash) return k;
  return -1;
}

/** Takes the least recently used slot (an empty slot's last use is 0). */
function replaceSlot(s: Float64Array, base: number, lastBase: number, n: number, hash: number, firstBase: number, ts: number): number {
  let slot = 0;
  for (let k = 1; k < n; k++) if (s[lastBase + k]! < s[lastBase + slot]!) slot = k;
  s[base + slot] = hash;
  if (firstBase >= 0) s[firstBase + slot] = ts;
  return slot;
}

function clip(x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x;
}

function isWrite(method: string): boolean {
  return method === 'POST' || method === 'PUT' || method === 'PATCH' || method === 'DELETE';
}

const FNV_OFFSET = 0x811c9dc5;

/** FNV-1a over s[from, to), continuing from `h`; never 0 (0 marks an empty slot). */
function fnv(s: string, from: number, to: number, h: number): number {
  for (let i = from; i < to; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0 || 1;
}

function mix(h: number, code: number): number {
  return Math.imul(h ^ code, 0x01000193);
}

/**
 * The network a principal "comes from": /24 for IPv4 (and IPv4-mapped IPv6), /48 for IPv6,
 * the usual allocation units of an office or a home line.
 */
export function networkOf(ip: string): string {
  const colon = ip.indexOf(':');
  if (colon === -1 || (ip.startsWith('::ffff:') && ip.includes('.'))) {
    const v4 = colon === -1 ? ip : ip.slice(7);
    const last = v4.lastIndexOf('.');
    return last === -1 ? v4 : v4.slice(0, last);
  }
  const [head = '', tail] = ip.toLowerCase().split('::');
  const groups = head === '' ? [] : head.split(':');
  if (tail !== undefined) {
    const tailGroups = tail === '' ? [] : tail.split(':');
    while (groups.length + tailGroups.length < 8) groups.push('0');
    groups.push(...tailGroups);
  }
  const out: string[] = [];
  for (let k = 0; k < 3; k++) out.push((groups[k] ?? '0').replace(/^0+(?=.)/, ''));
  return out.join(':');
}

const PH_NUM = 1;
const PH_UUID = 2;
const PH_HEX = 3;

/**
 * Path template hash (numeric ids, UUIDs and long hex ids collapsed), and the last such id
 * (hash bound to the template; numeric value for enumeration, else NaN). One pass, no
 * allocation: it runs on every request.
 */
export function parsePath(p: string, out: { tpl: number; idHash: number; idNum: number }): void {
  let end = p.length;
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 63 /* ? */ || c === 35 /* # */) {
      end = i;
      break;
    }
  }
  let tpl = FNV_OFFSET;
  let idStart = -1;
  let idEnd = -1;
  let idNum = Number.NaN;
  let start = 0;
  while (start <= end) {
    let stop = start;
    while (stop < end && p.charCodeAt(stop) !== 47 /* / */) stop++;
    const kind = segmentKind(p, start, stop);
    if (kind === 0) tpl = fnv(p, start, stop, tpl);
    else {
      tpl = mix(tpl, 0x10000 + kind);
      idStart = start;
      idEnd = stop;
      idNum = kind === PH_NUM ? Number(p.slice(start, stop)) : Number.NaN;
    }
    tpl = mix(tpl, 47);
    start = stop + 1;
  }
  out.tpl = tpl >>> 0 || 1;
  out.idHash = idStart === -1 ? 0 : fnv(p, idStart, idEnd, out.tpl);
  out.idNum = idNum;
}

function segmentKind(p: string, from: number, to: number): number {
  const len = to - from;
  if (len === 0) return 0;
  let digits = true;
  let hex = true;
  for (let i = from; i < to; i++) {
    const c = p.charCodeAt(i);
    const d = c >= 48 && c <= 57;
    if (!d) digits = false;
    if (!(d || (c >= 97 && c <= 102) || (c >= 65 && c <= 70))) {
      hex = false;
      if (!(len === 36 && c === 45)) return 0;
    }
  }
  if (digits) return len <= 15 ? PH_NUM : PH_HEX;
  if (hex && len >= 16) return PH_HEX;
  if (len === 36 && p.charCodeAt(from + 8) === 45 && p.charCodeAt(from + 13) === 45 && p.charCodeAt(from + 18) === 45 && p.charCodeAt(from + 23) === 45) {
    // Only the four dashes may be non-hex (checked above); anything else returned 0.
    return PH_UUID;
  }
  return 0;
}

/** Bytes of per-principal state, excluding the LRU entry and the key (measured: see features.test.ts). */
export const STATE_BYTES = STATE_LEN * 8;
