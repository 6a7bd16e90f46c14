-- wrk script: POST /api/v1/drivers/{id}/location, a different driver on every request (DRIVERS
-- of them in turn, default 50,000) at a position of its own around the quote bench's cell.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local drivers = tonumber(os.getenv("DRIVERS") or "50000")
local counter = 0

request = function()
  counter = counter + 1
  local n = counter % drivers
  local body = string.format('{"lat":%.6f,"lng":%.6f,"available":true}',
    37.70 + (n % 200) * 0.0005, -122.48 + math.floor(n / 200) % 200 * 0.0005)
  return wrk.format(nil, string.format("/api/v1/drivers/ping-%d/location", n), nil, body)
end
