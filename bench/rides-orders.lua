-- wrk script: POST /api/v1/orders paced for a steady rate: each connection waits DELAY_MS
-- (default 20) after every answer, so C connections send about C * 1000 / (DELAY_MS + latency)
-- orders a second. A new rider and pickup every request, in the inner 20 x 20 km of the city
-- bench/rides.sh loads (central Berlin), so the dispatcher matches each to a loaded driver.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local pause = tonumber(os.getenv("DELAY_MS") or "20")
local run = os.getenv("RUN") or tostring(os.time())
local half_lat = 15000 / 111195 * 2 / 3
local half_lng = half_lat / 0.6085
local counter = 0

init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

delay = function()
  return pause
end

request = function()
  counter = counter + 1
  local lat = 52.52 + (math.random() * 2 - 1) * half_lat
  local lng = 13.405 + (math.random() * 2 - 1) * half_lng
  local body = string.format(
    '{"user_id":"rider-%s-%d","pickup":{"lat":%.6f,"lng":%.6f},"dropoff":{"lat":%.6f,"lng":%.6f}}',
    run, counter, lat, lng, lat + 0.01, lng + 0.01)
  return wrk.format(nil, nil, nil, body)
end
