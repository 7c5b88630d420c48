// Quantiles of a Prometheus histogram between two scrapes of a gateway's /metrics: what the
// gateway measured inside itself during a run (the risk stage's time), as the bucket bound
// the quantile falls under (the resolution a histogram has).

/** Cumulative bucket counts by upper bound (`+Inf` last), read from exposition text. */
export function readHistogram(text: string, name: string): Map<number, number> {
  const buckets = new Map<number, number>();
  const re = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\d+(?:\\.\\d+)?)$`, 'gm');
  for (const m of text.matchAll(re)) buckets.set(m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2]));
  return buckets;
}

export async function scrapeHistogram(url: string, name: string): Promise<Map<number, number>> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return readHistogram(await res.text(), name);
}

/** The smallest bucket bound holding quantile `q` of the observations made between `before` and `after`; undefined without any. */
export function quantileBetween(before: Map<number, number>, after: Map<number, number>, q: number): { bound: number; count: number } | undefined {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const total = (after.get(Infinity) ?? 0) - (before.get(Infinity) ?? 0);
  if (total <= 0) return undefined;
  for (const b of bounds) if ((after.get(b)! - (before.get(b) ?? 0)) >= q * total) return { bound: b, count: total };
  return { bound: Infinity, count: total };
}
