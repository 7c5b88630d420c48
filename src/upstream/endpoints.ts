// Endpoint choice for an upstream with several endpoints (an edge node: its own region first,
// the central one behind it). Like Envoy's priority levels without overprovisioning: all
// traffic goes to the best priority that still has an endpoint in, and moves to the next only
// when every endpoint of the better one is out. An endpoint is out while its breaker refuses
// (open, or half-open with its probe in flight); so a broken local region hands its traffic
// to the central one after its breaker opens, and takes it back when a probe succeeds.
// Within a priority: least requests in flight (what a proxy knows for free; Envoy's
// LEAST_REQUEST), ties in turn so that an idle upstream's endpoints share the load.

export interface Endpoint {
  /** Unique across the gateway (e.g. "orders/local"): keys its breaker and its in-flight count. */
  readonly id: string;
  readonly url: string;
  /** Lower is preferred; 0 for the local region. */
  readonly priority: number;
}

export interface UpstreamEndpoints {
  readonly name: string;
  readonly endpoints: readonly Endpoint[];
}

export const NO_HEALTHY_ENDPOINT = Object.freeze({ reason: 'no_healthy_endpoint' as const });
export type NoHealthyEndpoint = typeof NO_HEALTHY_ENDPOINT;

export interface PickerDeps {
  /** Would the endpoint's breaker admit a request now? (Breakers.available.) */
  available(endpointId: string): boolean;
}

export interface Picker {
  /**
   * The endpoint to try, or NO_HEALTHY_ENDPOINT (answer 503). `exclude`: endpoints already
   * tried for this request — one whose admit() returned null, or a failed attempt before a
   * retry. Throws for an unknown upstream (a compile-time mistake, not a request's).
   */
  pick(upstream: string, exclude?: ReadonlySet<string>): Endpoint | NoHealthyEndpoint;
  /** Counts a request in flight to the endpoint until the returned release (idempotent) is called. */
  track(endpoint: Endpoint): () => void;
  inFlight(endpointId: string): number;
}

interface Slot {
  readonly endpoint: Endpoint;
  /** Shared with the previous picker's slot of the same id, so requests begun before a reload still count. */
  readonly load: { inFlight: number };
}

interface Level {
  readonly slots: readonly Slot[];
  /** Where the next tie-break scan starts. */
  next: number;
}

export function isNoHealthyEndpoint(value: Endpoint | NoHealthyEndpoint): value is NoHealthyEndpoint {
  return value === NO_HEALTHY_ENDPOINT;
}

/**
 * `previous`: the picker of the runtime being replaced; endpoints that keep their id keep
 * their in-flight counts (the requests already sent still load them).
 */
export function createPicker(upstreams: readonly UpstreamEndpoints[], deps: PickerDeps, previous?: Picker): Picker {
  const prior = previous === undefined ? undefined : LOADS.get(previous);
  const loads = new Map<string, { inFlight: number }>();
  const levelsOf = new Map<string, readonly Level[]>();
  for (const upstream of upstreams) {
    if (levelsOf.has(upstream.name)) throw new Error(`picker: duplicate upstream ${upstream.name}`);
    if (upstream.endpoints.length === 0) throw new Error(`picker: upstream ${upstream.name} has no endpoints`);
    const byPriority = new Map<number, Slot[]>();
    for (const endpoint of upstream.endpoints) {
      if (loads.has(endpoint.id)) throw new Error(`picker: duplicate endpoint id ${endpoint.id}`);
      if (!Number.isFinite(endpoint.priority)) throw new Error(`picker: endpoint ${endpoint.id} needs a finite priority`);
      const load = prior?.get(endpoint.id) ?? { inFlight: 0 };
      loads.set(endpoint.id, load);
      const level = byPriority.get(endpoint.priority) ?? [];
      level.push({ endpoint, load });
      byPriority.set(endpoint.priority, level);
    }
    const levels = [...byPriority.entries()].sort((a, b) => a[0] - b[0]).map(([, slots]): Level => ({ slots, next: 0 }));
    levelsOf.set(upstream.name, levels);
  }

  const picker: Picker = {
    pick(upstream, exclude) {
      const levels = levelsOf.get(upstream);
      if (levels === undefined) throw new Error(`picker: unknown upstream ${upstream}`);
      for (const level of levels) {
        const { slots } = level;
        const n = slots.length;
        let best = -1;
        let bestLoad = Infinity;
        for (let k = 0; k < n; k++) {
          const i = (level.next + k) % n;
          const slot = slots[i]!;
          if (slot.load.inFlight >= bestLoad) continue; // strictly less: the first in scan order wins a tie
          if (exclude?.has(slot.endpoint.id) === true || !deps.available(slot.endpoint.id)) continue;
          best = i;
          bestLoad = slot.load.inFlight;
        }
        if (best !== -1) {
          level.next = (best + 1) % n;
          return slots[best]!.endpoint;
        }
      }
      return NO_HEALTHY_ENDPOINT;
    },
    track(endpoint) {
      const load = loads.get(endpoint.id);
      if (load === undefined) throw new Error(`picker: unknown endpoint ${endpoint.id}`);
      load.inFlight++;
      let done = false;
      return () => {
        if (done) return;
        done = true;
        load.inFlight--;
      };
    },
    inFlight: (endpointId) => loads.get(endpointId)?.inFlight ?? 0,
  };
  LOADS.set(picker, loads);
  return picker;
}

const LOADS = new WeakMap<Picker, ReadonlyMap<string, { inFlight: number }>>();
