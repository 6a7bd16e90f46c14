-- wrk script: POST /v1/events, the seed's body, with an event_id of its own on every request (so
-- each one pays the dedup lookup and record). BATCH=N in the environment sends
-- POST /v1/events/batch with N such events per request instead.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local batch = tonumber(os.getenv("BATCH") or "0")
local run = os.getenv("RUN") or tostring(os.time())
local counter = 0

local function event()
  counter = counter + 1
  return string.format(
    '{"event_type":"page_view","event_id":"%s-%d-%d","user_id":"u_%d","path":"/home","ip":"8.8.8.8"}',
    run, math.random(1, 1000000000), counter, counter % 5000)
end

request = function()
  if batch == 0 then
    return wrk.format(nil, nil, nil, event())
  end
  local events = {}
  for i = 1, batch do
    events[i] = event()
  end
  return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(events, ",") .. ']}')
end
