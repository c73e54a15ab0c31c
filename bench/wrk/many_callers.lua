-- wrk script: GET /api/customers/42 as one of CALLERS (env, default 1000) callers, a random one per
-- request, each with its bearer token "bench-caller-<n>": many clients at a realistic rate each, as a
-- per-caller rate limit meets them (one token at wrk's rate would be over any sane limit).
local callers = tonumber(os.getenv("CALLERS") or "1000")

function setup(thread)
  thread:set("seed", math.random(1, 2 ^ 30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local headers = {["Authorization"] = "Bearer bench-caller-" .. math.random(1, callers)}
  return wrk.format("GET", "/api/customers/42", headers)
end
