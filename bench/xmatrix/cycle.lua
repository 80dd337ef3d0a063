-- bench/xmatrix/cycle.lua: wrk sends the requests of a list in turn.
--   wrk -s cycle.lua URL -- PATHS [HEADERS]
-- PATHS: one request path per line; HEADERS: the Authorization header
-- for each path, line by line (none: unauthenticated).

local paths, auths, i = {}, {}, 0

local function lines(file, into)
    local f = assert(io.open(file, "r"))
    for l in f:lines() do into[#into + 1] = l end
    f:close()
end

function init(args)
    lines(args[1], paths)
    if args[2] then lines(args[2], auths) end
    assert(#paths > 0, "no paths in " .. args[1])
end

function request()
    i = i % #paths + 1
    if auths[i] then
        return wrk.format("GET", paths[i], { Authorization = auths[i] })
    end
    return wrk.format("GET", paths[i])
end
