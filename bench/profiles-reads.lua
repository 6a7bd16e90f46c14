-- wrk script: GET /api/v1/profiles/by-user/{user_id}, PROFILES users in turn (default 10,000),
-- each loaded by bench/profiles.sh before the run.
local profiles = tonumber(os.getenv("PROFILES") or "10000")
local prefix = os.getenv("USER_PREFIX") or "bench-u-"
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/api/v1/profiles/by-user/%s%d", prefix, counter % profiles))
end
