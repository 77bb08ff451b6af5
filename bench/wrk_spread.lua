-- wrk script for `make bench`'s partitions section: POST a small JSON body to /async-function/<name>, the names
-- given after `--` taken in turn (so the calls spread over a queue's partitions), requests built once in init.
-- At the end, the same machine-readable summary line as wrk_post.lua.
local requests = {}
local n = 0

init = function(args)
  for _, name in ipairs(args) do
    requests[#requests + 1] = wrk.format("POST", "/async-function/" .. name,
      {["Content-Type"] = "application/json"}, "{}")
  end
end

request = function()
  n = n % #requests + 1
  return requests[n]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
