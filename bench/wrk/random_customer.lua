-- wrk script: GET /api/customers/{id} with a uniformly random id in 1..MAX_ID (env, default 10000),
-- and the bearer token from TOKEN (env). Each wrk thread seeds its own generator.
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
local token = os.getenv("TOKEN") or ""

function setup(thread)
  thread:set("seed", math.random(1, 2 ^ 30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local headers = {}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  return wrk.format("GET", "/api/customers/" .. math.random(1, max_id), headers)
end
