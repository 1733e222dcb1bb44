-- Telegram webhook updates: a private chat's text message, each with its own update_id,
-- chat and user (the same number n), so none is a duplicate and no user hits a rate limit.
-- Arguments after "--": FIRST (the first n), THREADS (wrk -t), SECRET (the secret token).

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local template = '{"update_id":%d,"message":{"message_id":1,"from":{"id":%d,' ..
  '"is_bot":false,"first_name":"Ada","language_code":"en"},"chat":{"id":%d,' ..
  '"type":"private","first_name":"Ada"},"date":%d,"text":"hello %d"}}'

function init(args)
  first, step = tonumber(args[1]), tonumber(args[2])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Telegram-Bot-Api-Secret-Token"] = args[3]
end

function request()
  local n = first + sent * step + id
  sent = sent + 1
  return wrk.format(nil, nil, nil, string.format(template, n, n, n, os.time(), n))
end
