-- wrk script: GET /api/v1/drivers/nearby, 2 km and the 10 nearest, around 1,024 centres drawn
-- (seeded) from the inner 20 x 20 km of the city bench/rides.sh loads (central Berlin), in turn.
local centre_lat, centre_lng = 52.52, 13.405
local half_lat = 15000 / 111195 * 2 / 3
local half_lng = half_lat / 0.6085
local paths = {}
local next_path = 0

init = function(args)
  math.randomseed(20261201)
  for i = 1, 1024 do
    local lat = centre_lat + (math.random() * 2 - 1) * half_lat
    local lng = centre_lng + (math.random() * 2 - 1) * half_lng
    paths[i] = string.format("/api/v1/drivers/nearby?lat=%.6f&lng=%.6f&radius_m=2000&limit=10", lat, lng)
  end
end

request = function()
  next_path = next_path % #paths + 1
  return wrk.format("GET", paths[next_path])
end
