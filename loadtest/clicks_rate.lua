-- wrk: the click mix of clicks.lua at a fixed rate, tagged so that its clicks can be found
-- in ClickHouse.  wrk -t1 ... -s clicks_rate.lua URL -- RATE TAG
-- Requests are paced by a clock (each one due 1/RATE s after the one before, whichever
-- connection is free sends it), so a server that answers slowly for a moment gets the
-- requests it missed once it answers again, as from visitors who do not wait for each
-- other; more than a second behind, the schedule starts again from now.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "clicks.lua")

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec_t;
  int clock_gettime(int clock_id, timespec_t *tp);
]]
local ts = ffi.new("timespec_t")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval_ms, due = 0, nil

function init(args)
  interval_ms = 1000 / tonumber(args[1])
  extra_query = "&sub3=" .. args[2]
end

function delay()
  local now = now_ms()
  if due == nil or now - due > 1000 then
    due = now
  end
  due = due + interval_ms
  return math.max(0, math.floor(due - interval_ms - now))
end
