-- wrk script: POST /api/orders, a random customer in 1..MAX_ID (env, default 10000) and one or two
-- lines of random products in 1..PRODUCTS (env, default 1000), quantity 1; bearer token from TOKEN.
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
local products = tonumber(os.getenv("PRODUCTS") or "1000")
local token = os.getenv("TOKEN") or ""

function setup(thread)
  thread:set("seed", math.random(1, 2 ^ 30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local first = math.random(1, products)
  local lines = '{"product_id":' .. first .. ',"quantity":1}'
  if math.random() < 0.5 then
    local second = 1 + (first % products)
    lines = lines .. ',{"product_id":' .. second .. ',"quantity":1}'
  end
  local body = '{"customer_id":' .. math.random(1, max_id) .. ',"lines":[' .. lines .. ']}'
  local headers = {["Content-Type"] = "application/json"}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  return wrk.format("POST", "/api/orders", headers, body)
end
