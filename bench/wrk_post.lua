-- wrk script for `make bench`: POST a small JSON body; at the end print one machine-readable summary line.
-- No response() hook: it would make wrk call Lua for every answer and cost CPU on the shared cores.
-- Non-2xx/3xx answers are counted by wrk itself (summary.errors.status); the benchmark also checks that
-- the stream grew by at least as many messages as wrk counted answers.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
