-- wrk script for bench/pg: each request asks for the profile of a random
-- user among the ROWS users of the bench database, so that the lookups
-- spread over the whole index instead of hitting one cached row.  The
-- requests are formatted once, up front: the load generator shares a core
-- with Postgres, and its own cost per request is not what is measured.
--
--   wrk -s bench/pg/profile.lua URL -- ROWS [SERVER_NAME]

local rows = 1000000
local server = "bench.example"
local requests = {}
local n = 65536
local i = 0

function init(args)
    rows = tonumber(args[1]) or rows
    server = args[2] or server
    math.randomseed(os.time())

    for k = 1, n do
        requests[k] = wrk.format("GET", "/_matrix/client/v3/profile/@u"
                                 .. math.random(1, rows) .. ":" .. server)
    end
end

function request()
    i = i % n + 1
    return requests[i]
end
