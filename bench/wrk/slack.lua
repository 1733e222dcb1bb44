-- Slack Events API requests, signed beforehand (wrk's Lua has no HMAC-SHA256): a file with
-- one request a line, "TIMESTAMP<tab>SIGNATURE<tab>BODY". Thread i of n sends lines i+1,
-- i+1+n, ...; past its last line it starts again and counts the reused bodies in `wrapped`
-- (Zapa then sees duplicates, so the benchmark makes the file long enough and reports them).
-- Arguments after "--": FILE, THREADS (wrk -t).

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local items = {}

function init(args)
  local step, index = tonumber(args[2]), 0
  wrk.method = "POST"
  for line in io.lines(args[1]) do
    if index % step == id then
      local stamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-Slack-Request-Timestamp"] = stamp,
        ["X-Slack-Signature"] = signature,
      }
      table.insert(items, wrk.format(nil, nil, headers, body))
    end
    index = index + 1
  end
end

function request()
  local k = sent % #items + 1
  if sent >= #items then
    wrapped = wrapped + 1
  end
  sent = sent + 1
  return items[k]
end
