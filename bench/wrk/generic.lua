-- Generic webhook messages: each opens a conversation of its own, for a user of its own.
-- Arguments after "--": TAG (makes ids unique across runs), THREADS (wrk -t), TOKEN (bearer).

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local template = '{"conversation_id":"%s-%d","user_id":"%s-%d","text":"hello %d"}'

function init(args)
  tag, step = args[1], tonumber(args[2])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[3]
end

function request()
  local n = sent * step + id
  sent = sent + 1
  return wrk.format(nil, nil, nil, string.format(template, tag, n, tag, n, n))
end
