#!/usr/bin/env node
// The ztgw command. Sizes libuv's thread pool before anything can start it (see
// thread-pool.ts), then loads the command line itself (main.ts).
import { availableParallelism } from 'node:os';
import { threadPoolSize } from './thread-pool.ts';

const size = threadPoolSize(process.env, availableParallelism());
if (size !== undefined) process.env.UV_THREADPOOL_SIZE = size;

const { main, fail } = await import('./main.ts');
main(process.argv.slice(2)).catch(fail);
