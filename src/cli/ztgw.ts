#!/usr/bin/env node
// The ztgw command. Sizes libuv's thread pool before anything can start it and checks
// ZTGW_POOL_NICE (see thread-pool.ts), then loads the command line itself (main.ts).
import { availableParallelism } from 'node:os';
import { poolNice, threadPoolSize } from './thread-pool.ts';

const size = threadPoolSize(process.env, availableParallelism());
if (size !== undefined) process.env.UV_THREADPOOL_SIZE = size;
try {
  poolNice(process.env);
} catch (err) {
  process.stderr.write(`ztgw: ${(err as Error).message}\n`);
  process.exit(2);
}

const { main, fail } = await import('./main.ts');
main(process.argv.slice(2)).catch(fail);
