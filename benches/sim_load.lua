-- wrk script: posts one form-encoded Graph batch of 50 text sends, over and over.
--   graph-sim --listen 127.0.0.1:8090 --page 100000000000001:load-token:1000000000 --rps-limit 1000000000
--   wrk -t1 -c8 -d10s -s benches/sim_load.lua http://127.0.0.1:8090/v21.0/
-- Multiply wrk's Requests/sec by 50 for operations per second. The content repeats, so this
-- measures the simulator without its per-content bookkeeping growing (see sim_load.rs for that).

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local ops = {}
for i = 1, 50 do
  local body = "recipient=" .. urlencode('{"id":"7' .. string.format("%014d", i) .. '"}')
    .. "&messaging_type=UPDATE"
    .. "&message=" .. urlencode('{"text":"Your order ' .. i .. ' has shipped."}')
  ops[i] = '{"method":"POST","relative_url":"me/messages","omit_response_on_success":false,"body":"'
    .. body .. '"}'
end
local batch = "[" .. table.concat(ops, ",") .. "]"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "access_token=load-token&include_headers=false&batch=" .. urlencode(batch)
