import { afterEach, describe, expect, it } from 'vitest';
import { createBreakers, type Breakers } from './breaker.ts';
import { createPicker, isNoHealthyEndpoint, NO_HEALTHY_ENDPOINT, type Endpoint, type UpstreamEndpoints } from './endpoints.ts';

const local1: Endpoint = { id: 'orders/local-1', url: 'http://10.0.0.1:8080', priority: 0 };
const local2: Endpoint = { id: 'orders/local-2', url: 'http://10.0.0.2:8080', priority: 0 };
const central: Endpoint = { id: 'orders/central', url: 'https://orders.central.example', priority: 1 };
const orders: UpstreamEndpoints = { name: 'orders', endpoints: [central, local1, local2] };

function withOut() {
  const out = new Set<string>();
  return { out, available: (id: string) => !out.has(id) };
}

const ids = (picks: Array<Endpoint | typeof NO_HEALTHY_ENDPOINT>) => picks.map((p) => (isNoHealthyEndpoint(p) ? 'none' : p.id));

describe('pick', () => {
  it('prefers the best priority and takes its endpoints in turn when idle', () => {
    const { available } = withOut();
    const picker = createPicker([orders], { available });
    expect(ids([1, 2, 3, 4].map(() => picker.pick('orders')))).toEqual(['orders/local-1', 'orders/local-2', 'orders/local-1', 'orders/local-2']);
  });

  it('sends to the endpoint with the fewest requests in flight', () => {
    const { available } = withOut();
    const picker = createPicker([orders], { available });
    const releases = [picker.track(local1), picker.track(local1)];
    expect(ids([1, 2].map(() => picker.pick('orders')))).toEqual(['orders/local-2', 'orders/local-2']);
    const r = picker.track(local2);
    expect(picker.pick('orders')).toBe(local2); // 2 against 1
    picker.track(local2);
    expect(picker.inFlight('orders/local-2')).toBe(2);
    releases[0]!();
    releases[0]!(); // idempotent: one release, not two
    expect(picker.inFlight('orders/local-1')).toBe(1);
    expect(picker.pick('orders')).toBe(local1);
    r();
    expect(picker.inFlight('orders/local-2')).toBe(1);
  });

  it('fails over to the next priority only when every endpoint of the better one is out, and back', () => {
    const { out, available } = withOut();
    const picker = createPicker([orders], { available });
    out.add(local1.id);
    expect(ids([1, 2].map(() => picker.pick('orders')))).toEqual(['orders/local-2', 'orders/local-2']);
    out.add(local2.id);
    expect(picker.pick('orders')).toBe(central);
    out.add(central.id);
    expect(picker.pick('orders')).toBe(NO_HEALTHY_ENDPOINT);
    out.delete(local2.id);
    expect(picker.pick('orders')).toBe(local2);
  });

  it('skips the endpoints a request has already tried', () => {
    const { available } = withOut();
    const picker = createPicker([orders], { available });
    expect(picker.pick('orders', new Set([local1.id]))).toBe(local2);
    expect(picker.pick('orders', new Set([local1.id, local2.id]))).toBe(central);
    expect(picker.pick('orders', new Set([local1.id, local2.id, central.id]))).toBe(NO_HEALTHY_ENDPOINT);
  });

  it('refuses unknown upstreams and endpoints, duplicates and empty upstreams', () => {
    const picker = createPicker([orders], withOut());
    expect(() => picker.pick('nope')).toThrow(/unknown upstream/);
    expect(() => picker.track({ id: 'x', url: 'http://x', priority: 0 })).toThrow(/unknown endpoint/);
    expect(() => createPicker([orders, orders], withOut())).toThrow(/duplicate upstream/);
    expect(() => createPicker([{ name: 'a', endpoints: [local1, local1] }], withOut())).toThrow(/duplicate endpoint/);
    expect(() => createPicker([{ name: 'a', endpoints: [] }], withOut())).toThrow(/no endpoints/);
  });

  it('keeps in-flight counts across a reload for endpoints that stay', () => {
    const first = createPicker([orders], withOut());
    const release = first.track(local1);
    const second = createPicker([orders], withOut(), first);
    expect(second.inFlight(local1.id)).toBe(1);
    expect(second.pick('orders')).toBe(local2);
    release(); // a request begun before the swap ends
    expect(second.inFlight(local1.id)).toBe(0);
  });
});

describe('pick with breakers', () => {
  let breakers: Breakers | undefined;
  afterEach(() => breakers?.shutdown());

  async function until(what: string, condition: () => boolean, deadlineMs = 5_000): Promise<void> {
    const end = Date.now() + deadlineMs;
    while (!condition()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it('routes around an open breaker, lets one request probe it when half-open, and returns after', async () => {
    const single: UpstreamEndpoints = { name: 'orders', endpoints: [local1, central] };
    breakers = createBreakers(single.endpoints.map((e) => ({ id: e.id, upstream: 'orders', options: { volumeThreshold: 1, resetTimeoutMs: 500 } })));
    const b = breakers;
    const picker = createPicker([single], { available: (id) => b.available(id) });
    expect(picker.pick('orders')).toBe(local1);
    b.admit(local1.id)!.failed('connect');
    await until('local open', () => b.state(local1.id) === 'open');
    expect(picker.pick('orders')).toBe(central);

    await until('local half-open', () => b.state(local1.id) === 'half-open');
    const probeTarget = picker.pick('orders');
    expect(probeTarget).toBe(local1);
    const probe = b.admit(local1.id)!;
    expect(probe).not.toBeNull();
    // While the probe is out, everyone else goes to the next priority.
    expect(picker.pick('orders')).toBe(central);
    probe.responded(204);
    await until('local closed', () => b.state(local1.id) === 'closed');
    expect(picker.pick('orders')).toBe(local1);
  });
});
