-- wrk: a realistic click mix (50 links, sub values, long user agents, cookies on half,
-- many client IPs through a trusted proxy)
local slugs = {}
for i = 1, 50 do slugs[i] = "bench-" .. i end
local agents = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36 Instagram 357.0.0.25.101",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
}
-- appended to every request's query (clicks_rate.lua tags a fixed-rate run with it)
extra_query = extra_query or ""
local n = 0
request = function()
  n = n + 1
  local slug = slugs[math.random(#slugs)]
  local path = "/c/" .. slug .. "?sub1=" .. math.random(1000000) .. "&sub2=email-" ..
    math.random(50) .. "&utm_source=newsletter&utm_medium=email&utm_campaign=spring" .. extra_query
  local headers = { ["User-Agent"] = agents[math.random(#agents)],
                    ["Accept-Language"] = "en-GB,en;q=0.9",
                    ["Referer"] = "https://news.example/article-" .. math.random(100) }
  -- many clients behind a trusted proxy (the bench sets TRACKER_TRUSTED_PROXIES), so the
  -- per-IP fraud rules stay at their shipped settings and do not trip on honest traffic
  headers["X-Forwarded-For"] = math.random(11, 200) .. "." .. math.random(0, 255) .. "." ..
    math.random(0, 255) .. "." .. math.random(1, 254)
  if n % 2 == 0 then
    headers["Cookie"] = "vid=01a20e46-485c-7006-9fb4-8c1fcc37" .. string.format("%04x", math.random(65535))
  end
  return wrk.format("GET", path, headers)
end
