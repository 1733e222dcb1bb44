-- Shared by the webhook benchmark's wrk scripts (bench/webhooks.py runs them).
--
-- Each thread counts the requests it built (`sent`), the requests that had to reuse a
-- pre-built body (`wrapped`), and the responses by status code; `done` adds the threads'
-- counts up and prints one line, "WRK_RESULT {json}", with them and the latency
-- distribution (microseconds). A script gives each thread its `id` (0, 1, ...) in `setup`,
-- so that threads build disjoint requests.

local threads = {}

-- WRK_PACE_MS paces each connection: one request per that many milliseconds, so that
-- connections x 1000 / WRK_PACE_MS requests a second are offered (unset: as fast as served).
local pace = tonumber(os.getenv("WRK_PACE_MS") or "")
if pace then
  function delay()
    return pace
  end
end

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

sent = 0
wrapped = 0
statuses = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local codes, total_sent, total_wrapped = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      codes[status] = (codes[status] or 0) + count
    end
    total_sent = total_sent + thread:get("sent")
    total_wrapped = total_wrapped + thread:get("wrapped")
  end
  local parts = {}
  for status, count in pairs(codes) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"sent":%d,"wrapped":%d,"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,' ..
    '"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout, total_sent, total_wrapped,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
