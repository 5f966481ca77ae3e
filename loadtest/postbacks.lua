-- wrk: realistic server-to-server postbacks. Arguments (after `--`): the file of click ids
-- (one a line, real clicks of the hot window), the advertiser, its postback token, and a
-- run tag that starts every txid (unique per request: thread number and a counter).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("number", threads)
end

local ids, advertiser, token, tag, number
local n = 0
local events = { "sale", "sale", "sale", "lead", "install" }
local currencies = { "USD", "EUR", "GBP", "USD", "JPY" }

function init(args)
  ids = {}
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  advertiser, token, tag = args[2], args[3], args[4]
  number = wrk.thread:get("number")
end

request = function()
  n = n + 1
  local i = math.random(5)
  local amount = currencies[i] == "JPY" and tostring(math.random(100, 90000))
    or (math.random(1, 500) .. "." .. string.format("%02d", math.random(0, 99)))
  local path = "/postback?advertiser=" .. advertiser .. "&token=" .. token ..
    "&click_id=" .. ids[math.random(#ids)] .. "&txid=" .. tag .. "-" .. number .. "-" .. n ..
    "&amount=" .. amount .. "&currency=" .. currencies[i] .. "&event=" .. events[i] ..
    "&sub1=order-" .. math.random(100000)
  return wrk.format("GET", path, { ["User-Agent"] = "shop-backend/2.3 (postbacks)" })
end
