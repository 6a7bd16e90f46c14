-- wrk script: POST /api/v1/orders with a different user and pickup on every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0

request = function()
  counter = counter + 1
  local lat = 37.70 + (counter % 200) * 0.0005
  local body = string.format(
    '{"user_id":"bench-%d","pickup":{"lat":%.6f,"lng":-122.42},"dropoff":{"lat":37.80,"lng":-122.40}}',
    counter % 5000, lat)
  return wrk.format(nil, nil, nil, body)
end
