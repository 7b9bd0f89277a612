-- wrk script of scenarios d and d10 (bench/scenarios.sh, profile.sh, instructions.sh): every
-- request to one of the routes /r/0 ... /r/N-1 at random, N the script's argument (10000 when
-- none is given).
math.randomseed(os.time())
local n = 10000
init = function(args) if args[1] then n = tonumber(args[1]) end end
request = function()
  return wrk.format(nil, "/r/" .. math.random(0, n - 1))
end
