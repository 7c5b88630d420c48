// On-demand CPU profiles and heap snapshots through node:inspector, the Node counterpart of
// Go's /debug/pprof. The outputs load in Chrome DevTools or speedscope.
import { Session } from 'node:inspector/promises';
import type { Writable } from 'node:stream';

export const MAX_PROFILE_SECONDS = 60;

/** Samples the CPU for `seconds` and returns a .cpuprofile document. */
export async function cpuProfile(seconds: number): Promise<unknown> {
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    const { profile } = await session.post('Profiler.stop');
    return profile;
  } finally {
    session.disconnect();
  }
}

/** Streams a .heapsnapshot into `out` chunk by chunk (snapshots can be hundreds of MB). */
export async function heapSnapshot(out: Writable): Promise<void> {
  const session = new Session();
  session.connect();
  try {
    session.on('HeapProfiler.addHeapSnapshotChunk', (message) => {
      out.write(message.params.chunk);
    });
    await session.post('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
  } finally {
    session.disconnect();
    out.end();
  }
}
