-- Driven by wrk.ts: each wrk thread sends requests built once in init(), so the per-request
-- work in the load generator is a table lookup whatever the target. Arguments after `--`:
--   <thread count> [<pool file>]
-- A pool file has one request's extra headers per line, `name<TAB>value<TAB>name<TAB>value…`;
-- thread k of n takes lines k, k+n, k+2n… A thread that has sent all of its lines starts
-- over, and every request it sends from then on counts as an overrun (run.ts fails the run
-- when the pool was single-use DPoP proofs).
-- done() prints one JSON line for wrk.ts.

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local requests = {}
local next_index = 0
local wrapped = false
local pooled = false
overruns = 0 -- global: done() reads it from each thread

local function split_tabs(line)
  local fields = {}
  for field in string.gmatch(line, "[^\t]+") do table.insert(fields, field) end
  return fields
end

function init(args)
  local thread_count = tonumber(args[1])
  local pool_file = args[2]
  if pool_file == nil then
    requests[1] = wrk.format()
    return
  end
  pooled = true
  local line_number = 0
  for line in io.lines(pool_file) do
    if line_number % thread_count == id then
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      local fields = split_tabs(line)
      for i = 1, #fields, 2 do headers[fields[i]] = fields[i + 1] end
      table.insert(requests, wrk.format(nil, nil, headers))
    end
    line_number = line_number + 1
  end
  if #requests == 0 then error("wrk-load.lua: thread " .. id .. " got no lines of " .. pool_file) end
end

function request()
  next_index = next_index + 1
  if next_index > #requests then
    next_index = 1
    wrapped = true
  end
  if wrapped and pooled then overruns = overruns + 1 end
  return requests[next_index]
end

function done(summary, latency, _)
  local overrun_count = 0
  for _, thread in ipairs(threads) do overrun_count = overrun_count + thread:get("overruns") end
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"requests":%d,"durationUs":%d,"status4xx5xx":%d,"socketErrors":%d,"timeouts":%d,"p50Us":%d,"p99Us":%d,"overruns":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), overrun_count))
end
