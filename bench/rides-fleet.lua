-- wrk script: POST /api/v1/drivers/locations with BATCH positions per request (default 100).
-- The bodies are built once per thread: DRIVERS drivers (default 20,000) in batches of BATCH,
-- sent in turn, so every request reports other drivers than the one before. Positions are
-- around the quote bench's cell; the answer's timestamps are the server's.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local batch = tonumber(os.getenv("BATCH") or "100")
local drivers = tonumber(os.getenv("DRIVERS") or "20000")
local bodies = {}
local next_body = 0

init = function(args)
  for first = 0, drivers - batch, batch do
    local locations = {}
    for i = 1, batch do
      local n = first + i - 1
      locations[i] = string.format('{"driver_id":"fleet-%d","lat":%.6f,"lng":%.6f,"available":true}',
        n, 37.70 + (n % 200) * 0.0005, -122.48 + math.floor(n / 200) % 200 * 0.0005)
    end
    bodies[#bodies + 1] = '{"locations":[' .. table.concat(locations, ",") .. ']}'
  end
end

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
