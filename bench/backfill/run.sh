#!/bin/sh
# bench/backfill: events/s that GET /_matrix/federation/v1/backfill serves
# (limit=100) to a server joined to a silo room, next to the rate at
# which Postgres gives the same rows to the same query without nginx, in
# the same run: the ratio is what the module adds to reading the rows
# (the X-Matrix check, the room and access lookups, rebuilding each
# event's content from the silo row, the JSON).
#
# The room: a silo room of MEMBERS members with MESSAGES messages by
# AUTHORS authors (bench/lib.sh), made into a Matrix room with its last
# HISTORY messages (matrix_room_history) by the first make_join of a user
# of remote.test (the fake homeserver), who then joins: remote.test may
# read the room.  The creation is timed and printed (a one-time cost).
# HISTORY is 100,000 by default: the whole room (about 26 s to make on
# 2 cores).
#
# The requests: STARTS events spread evenly over the room's history, each
# with at least 100 events before it; one request each,
# ?v=$event&limit=100, with its own X-Matrix header signed by remote.test
# (bench/fed.py sign); wrk cycles through them (bench/xmatrix/cycle.lua).
# Each answer carries 100 PDUs (checked on a few before measuring): events/s
# = requests/s x 100.
#
# The baseline: pgbench, each transaction the statement the module runs
# for a backfill,
#   SELECT * FROM matrix_event_parts(ARRAY(SELECT matrix_backfill(
#       room_nid, '["$event"]', 100)))
# for a random one of the same starting events (looked up by number in
# a small table in the same statement), on a connection with the
# module's search_path (matrix, matrix_silo), prepared as the module
# prepares: rows/s = transactions/s x 100.
#
# Fairness:
#  - one nginx worker pinned to core 0 with a pool of 8 connections; wrk
#    (one thread, 16 connections) pinned to core 1.  pgbench (one thread,
#    8 clients: the pool's 8 connections) pinned to core 1.  Postgres
#    floats over both cores in both.
#  - the module's tables ANALYZEd after the room is made, as autovacuum
#    would within a minute (STATS=0: not).
#  - a warm-up of each, then ROUNDS rounds of each, alternating; the best
#    round of each is compared.  Any non-2xx answer or socket error fails
#    the bench.
#
#   sh bench/backfill/run.sh   (MEMBERS, MESSAGES, AUTHORS, HISTORY,
#                               STARTS, DURATION, ROUNDS, STATS, PORT
#                               from the env)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

MEMBERS=${MEMBERS:-100000}
MESSAGES=${MESSAGES:-100000}
AUTHORS=${AUTHORS:-1000}
HISTORY=${HISTORY:-100000}
STARTS=${STARTS:-1000}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
STATS=${STATS:-1}
CONNECTIONS=${CONNECTIONS:-16}
PORT=${PORT:-18452}
LIMIT=100
ROOM='!r1:bench.test'

bench_need wrk pgbench psql curl taskset perl
[ $AUTHORS -le $MEMBERS ] || die "AUTHORS ($AUTHORS) > MEMBERS ($MEMBERS)"


sql() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h $run -U postgres -d bench "$@"
}

t0=$(date +%s)
bench_fed_start bf $MEMBERS
bench_silo_room $run bench 1 $MEMBERS $MESSAGES $AUTHORS
echo "silo: a room of $MEMBERS members, $MESSAGES messages by $AUTHORS authors:" \
     "$(($(date +%s) - t0)) s"

bench_fed_nginx $run $PORT "matrix_room_history $HISTORY;"

# the room made (timed), and remote.test joined
taskset -c 1 /usr/bin/python3 bench/fed.py create http://127.0.0.1:$PORT \
    $CONTROL b "$ROOM" > $run/create.out \
    || { cat $run/create.out; tail -20 $run/logs/error.log >&2;
         die "making the room failed"; }
create_ms=$(sed -n 's/^summary .* create_ms=//p' $run/create.out)
nid=$(sql -c "SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$ROOM'")
events=$(sql -c "SELECT count(*) FROM matrix.events WHERE room_nid = $nid")
echo "room $ROOM: $events events (history $HISTORY), made by the first" \
     "make_join in $create_ms ms"

if [ "$STATS" = 1 ]; then
    sql -c 'ANALYZE matrix.events; ANALYZE matrix.room_state;
            ANALYZE matrix.forward_extremities; ANALYZE matrix.matrix_rooms'
fi

# STARTS events evenly spread over the room, each with LIMIT - 1 before it
sql >/dev/null <<SQL
CREATE TABLE public.bench_starts (i integer PRIMARY KEY, event_id text NOT NULL);
INSERT INTO public.bench_starts
    SELECT row_number() OVER (ORDER BY nid), event_id
      FROM (SELECT nid, event_id, row_number() OVER (ORDER BY nid) AS k,
                   count(*) OVER () AS n
              FROM matrix.events WHERE room_nid = $nid) e
     WHERE k >= $LIMIT
       AND (k - $LIMIT) % greatest((n - $LIMIT + 1) / $STARTS, 1) = 0
     LIMIT $STARTS;
ANALYZE public.bench_starts;
SQL
starts=$(sql -c 'SELECT count(*) FROM public.bench_starts')
[ "$starts" -ge 1 ] || die "no starting events (fewer than $LIMIT events?)"

room_q=$(printf %s "$ROOM" | sed -e 's/!/%21/' -e 's/:/%3A/')
sql -c 'SELECT event_id FROM public.bench_starts ORDER BY i' \
    | sed -e 's/^\$/%24/' \
          -e "s|^|/_matrix/federation/v1/backfill/$room_q?v=|" \
          -e "s|\$|\&limit=$LIMIT|" > $run/uris
/usr/bin/python3 bench/fed.py sign $CONTROL GET bench.test $run/uris $run/uris.auth \
    || die "signing the requests failed"

# the first, a middle and the last request: 200 and LIMIT PDUs each
for k in 1 $(((starts + 1) / 2)) $starts; do
    uri=$(sed -n ${k}p $run/uris)
    code=$(curl -s -o $run/body.json -w '%{http_code}' --max-time 60 \
           -H "Authorization: $(sed -n ${k}p $run/uris.auth)" \
           "http://127.0.0.1:$PORT$uri" || true)
    pdus=$(/usr/bin/python3 -c 'import json, sys
print(len(json.load(open(sys.argv[1]))["pdus"]))' $run/body.json 2>/dev/null || true)
    if [ "$code" != 200 ] || [ "$pdus" != $LIMIT ]; then
        head -c 300 $run/body.json >&2; echo >&2
        tail -20 $run/logs/error.log >&2 || true
        die "GET $uri: $code, ${pdus:-no} PDUs (expected 200, $LIMIT)"
    fi
done
echo "backfill: $starts starting events, each answer $LIMIT PDUs" \
     "($(wc -c < $run/body.json) bytes, the last one)"

# the baseline's statement gives LIMIT rows too
cat > $run/raw.sql <<SQL
\\set i random(1, $starts)
SELECT * FROM matrix_event_parts(ARRAY(SELECT matrix_backfill($nid,
    (SELECT jsonb_build_array(event_id) FROM public.bench_starts
      WHERE i = :i), $LIMIT)));
SQL
rows=$(PGOPTIONS='-c search_path=matrix,matrix_silo' sql -c "SELECT count(*)
    FROM matrix_event_parts(ARRAY(SELECT matrix_backfill($nid,
        (SELECT jsonb_build_array(event_id) FROM public.bench_starts
          WHERE i = 1), $LIMIT)))")
[ "$rows" = $LIMIT ] || die "the baseline's statement gives $rows rows, not $LIMIT"

# events/s through nginx; fails on any non-2xx answer or socket error
wrk_rate() {
    taskset -c 1 wrk -t1 -c$CONNECTIONS -d${1}s -s bench/xmatrix/cycle.lua \
        "http://127.0.0.1:$PORT" -- $run/uris $run/uris.auth > $run/wrk.out
    if grep -q -e '^  Non-2xx' -e '^  Socket errors' $run/wrk.out; then
        cat $run/wrk.out >&2
        tail -20 $run/logs/error.log >&2
        die "wrk: errors through nginx"
    fi
    awk -v l=$LIMIT '/^Requests\/sec:/ { print int($2 * l) }' $run/wrk.out
}

# rows/s from Postgres alone
pg_rate() {
    PGOPTIONS='-c search_path=matrix,matrix_silo' taskset -c 1 \
        pgbench -h $run -U postgres -n -M prepared -c 8 -j 1 -T $1 \
        -f $run/raw.sql bench > $run/pgbench.out 2>&1 \
        || { cat $run/pgbench.out >&2; die "pgbench failed"; }
    awk -v l=$LIMIT '/^tps = / { print int($3 * l) }' $run/pgbench.out
}

m=$(wrk_rate 2); p=$(pg_rate 2)
echo "warm-up: module $m events/s, Postgres $p rows/s"

for i in $(seq $ROUNDS); do
    m=$(wrk_rate $DURATION); p=$(pg_rate $DURATION)
    echo "round $i: module $m events/s, Postgres $p rows/s"
    echo "$m $p" >> $run/rounds
done

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi

awk -v c=$create_ms -v e=$events '
    $1 > m { m = $1 } $2 > p { p = $2 }
    END { printf "backfill: room of %d events made in %.1f s (one time)\n", e, c / 1000;
          printf "backfill: module %d events/s (limit=100) vs Postgres %d rows/s (same statement), ratio %.3f\n", m, p, m / p }' $run/rounds
