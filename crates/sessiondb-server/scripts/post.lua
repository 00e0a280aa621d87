-- wrk script: POST {"sessionKey": $SESSION_KEY} to the URL given to wrk,
-- and print one summary line (requests per second, latency percentiles).
local key = os.getenv("SESSION_KEY") or ""
local label = os.getenv("LABEL") or "route"

wrk.method = "POST"
wrk.body = '{"sessionKey":"' .. key .. '"}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format(
    "RESULT %-8s %9.0f req/s   p50 %6.3f ms   p90 %6.3f ms   p99 %6.3f ms   max %7.3f ms   requests %d   errors %d\n",
    label, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, errors))
end
