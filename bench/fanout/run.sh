#!/bin/sh
# bench/fanout: one message of the silo to a room with users of DESTS
# other servers: the time until every one of them has received the PUT
# /_matrix/federation/v1/send carrying it, and the database writes that
# message causes, next to the same for a room with one other server, in
# the same run.  Target: writes ratio ~ 1 (the send queue's cost per
# message does not grow with the destinations: docs/storage.md, "The send
# queue").
#
# The other servers: d1.fan.test .. dDESTS.fan.test (the fanout room)
# and d0.fan.test (the baseline room), all played by one process,
# bench/fanout/receiver.py (asyncio + TLS on 127.0.0.1, a certificate
# for *.fan.test from the fake homeserver's CA), which answers every
# transaction 200 at once and logs when it came and which probe
# messages it carried.  The test DNS (t/lib/MatrixDNS.pm) gives each
# name 127.0.0.1 and an SRV record to the receiver's port, so the module
# discovers each server as it would a real one (the well-known on port
# 443 fails: nothing listens there; then the SRV record), with
# matrix_federation_allow_ip 127.0.0.0/8.
#
# The rooms: bench/lib.sh's generated silo, two rooms of MEMBERS members
# with MESSAGES messages by AUTHORS authors, made Matrix rooms by the
# first make_join of @f0:remote.test (the fake homeserver), who joins
# them through the real send_join.  The remote users are then put in
# by SQL, not by 1,000 send_joins (each would need a key server of its
# own): a member event row (the real join's row with the user changed)
# and its room_state row with membership 'join' per server, and
# remote.test's own membership set to 'leave'.  That is what the send
# queue reads: the destinations of a room are the servers with a
# room_state 'join' in it (matrix_federation_enqueue, _pending), nothing
# else of a join is read when sending.
#
# The message: a row inserted into the silo's messages table, so that
# the change feed's trigger fires (matrix.silo_change_trigger, created
# here) and a worker makes it an event and queues it; its author has a
# join already (an author of the history), so it is one event.  Each
# room gets a first message (the destinations' rows are created then,
# once per server), then the measured one.  The time is from before the
# INSERT's commit to the last receiver's log line carrying it.
#
# The writes: n_tup_ins + n_tup_upd + n_tup_del of the module's tables
# (pg_stat_user_tables, schema matrix) before and after the measured
# message, after waiting for the backends to report (PostgreSQL 15 does
# within 10 s of going idle); nothing else runs meanwhile.
#
# One nginx worker pinned to core 0; the receiver on core 1.
#
#   sh bench/fanout/run.sh   (DESTS, MEMBERS, MESSAGES, AUTHORS, PORT,
#                             RECEIVER_PORT from the env)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

DESTS=${DESTS:-1000}
MEMBERS=${MEMBERS:-100}
MESSAGES=${MESSAGES:-100}
AUTHORS=${AUTHORS:-10}
PORT=${PORT:-18455}
RECEIVER_PORT=${RECEIVER_PORT:-18456}

bench_need psql taskset perl
[ $DESTS -ge 1 ] || die "DESTS must be at least 1"
[ $AUTHORS -le $MEMBERS ] || die "AUTHORS ($AUTHORS) > MEMBERS ($MEMBERS)"

sql() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h $run -U postgres -d bench "$@"
}

run=$(mktemp -d /tmp/mxbench-fanout-XXXXXX)
chmod 0755 $run
cleanup() {
    [ -f $run/nginx.pid ] && kill $(cat $run/nginx.pid) 2>/dev/null || true
    [ -f $run/receiver.pid ] && kill $(cat $run/receiver.pid) 2>/dev/null || true
    if [ -f $run/peers.pid ]; then
        kill $(cat $run/peers.pid) 2>/dev/null || true
        wait $(cat $run/peers.pid) 2>/dev/null || true
    fi
    bench_pg_stop $run
    rm -rf $run
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
perl -It/lib bench/fanout/peers.pl $run/peers.env $DESTS $RECEIVER_PORT \
    > $run/peers.log 2>&1 &
echo $! > $run/peers.pid
for i in $(seq 1200); do
    [ -f $run/peers.env ] && break
    kill -0 $(cat $run/peers.pid) 2>/dev/null || { cat $run/peers.log >&2; die "no peers"; }
    sleep 0.1
done
[ -f $run/peers.env ] || { cat $run/peers.log >&2; die "the peers took over 120 s"; }
. $run/peers.env

: > $run/received
taskset -c 1 /usr/bin/python3 bench/fanout/receiver.py $RECEIVER_PORT \
    "$CERT" "$KEY" $run/received > $run/receiver.log 2>&1 &
echo $! > $run/receiver.pid
for i in $(seq 50); do
    grep -q ready $run/receiver.log && break
    sleep 0.1
done
grep -q ready $run/receiver.log || { cat $run/receiver.log >&2; die "the receiver did not start"; }

bench_pg_start $run 256MB
bench_silo_make $run bench $MEMBERS
build/matrix-tool migrate "host=$run dbname=bench user=postgres" >/dev/null \
    || die "matrix-tool migrate failed"
bench_silo_room $run bench 1 $MEMBERS $MESSAGES $AUTHORS
bench_silo_room $run bench 2 $MEMBERS $MESSAGES $AUTHORS
sql -c "CREATE TRIGGER matrix_feed AFTER INSERT OR UPDATE OR DELETE ON silo.messages
        FOR EACH ROW EXECUTE FUNCTION
        matrix.silo_change_trigger('id', 'room_id', 'source', 'html')"
echo "setup: $DESTS + 1 receivers, two silo rooms of $MEMBERS members:" \
     "$(($(date +%s) - t0)) s"

bench_fed_nginx $run $PORT

taskset -c 1 /usr/bin/python3 bench/fed.py create http://127.0.0.1:$PORT \
    $CONTROL f '!r1:bench.test' '!r2:bench.test' > $run/create.out \
    || { cat $run/create.out; tail -20 $run/logs/error.log >&2;
         die "making the rooms failed"; }

# ROOM FIRST LAST: users @uI:dI.fan.test joined, I from FIRST to LAST
# (their member events as remote.test's real join, the user changed)
join_servers() {
    sql >/dev/null <<SQL
WITH r AS (SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '!r$1:bench.test'),
j AS (SELECT e.* FROM matrix.events e, r
       WHERE e.room_nid = r.room_nid AND e.type = 'm.room.member'
         AND e.state_key = '@f0:remote.test'),
n AS (INSERT INTO matrix.events (depth, origin_server_ts, room_nid, event_id,
          type, state_key, sender, prev_nids, auth_nids, pdu)
      SELECT j.depth, j.origin_server_ts, j.room_nid,
             '\$fanout-join-' || $1 || '-' || i,
             'm.room.member', '@u' || i || ':d' || i || '.fan.test',
             '@u' || i || ':d' || i || '.fan.test', j.prev_nids, j.auth_nids,
             replace(j.pdu, '@f0:remote.test', '@u' || i || ':d' || i || '.fan.test')
        FROM j, generate_series($2, $3) i
      RETURNING nid, room_nid, state_key)
INSERT INTO matrix.room_state (room_nid, type, state_key, event_nid, membership)
    SELECT room_nid, 'm.room.member', state_key, nid, 'join' FROM n;
UPDATE matrix.room_state SET membership = 'leave'
 WHERE state_key = '@f0:remote.test' AND room_nid = (SELECT room_nid
       FROM matrix.matrix_rooms WHERE room_id = '!r$1:bench.test');
SQL
}
join_servers 1 0 0
join_servers 2 1 $DESTS
sql -c 'ANALYZE matrix.events; ANALYZE matrix.room_state;
        ANALYZE matrix.forward_extremities; ANALYZE matrix.matrix_rooms'
for r in 1 2; do
    n=$(sql -c "SELECT count(DISTINCT substr(state_key, strpos(state_key, ':') + 1))
                  FROM matrix.room_state s JOIN matrix.matrix_rooms m USING (room_nid)
                 WHERE m.room_id = '!r$r:bench.test' AND s.membership = 'join'
                   AND s.state_key NOT LIKE '%:bench.test'")
    echo "room !r$r:bench.test: joined by users of $n other servers"
done

probe=0
# ROOM: a silo message in ROOM (its author: user 1, of the history),
# probe number $probe + 1; $s: the nanoseconds before its INSERT
post() {
    probe=$((probe + 1))
    s=$(date +%s%N)
    sql -c "INSERT INTO silo.messages (id, room_id, user_id, source, created_at)
            VALUES ($1 * 10000000 + 5000000 + $probe, $1, 1,
                    'fanout-probe-$probe: a message to every server', now())" \
        >/dev/null
}

# N: waits until N servers have probe $probe (120 s at most); prints the
# nanoseconds of the last arrival
arrived() {
    for i in $(seq 1200); do
        n=$(grep -c " fanout-probe-$probe\$" $run/received || true)
        if [ "$n" -ge $1 ]; then
            grep " fanout-probe-$probe\$" $run/received | sort -n | tail -1 | cut -d' ' -f1
            return
        fi
        sleep 0.1
    done
    tail -20 $run/logs/error.log >&2
    die "probe $probe reached $n of $1 servers in 120 s"
}

# the module's rows written so far, as the statistics have them
writes() {
    sleep 11
    sql -c "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del)
              FROM pg_stat_user_tables WHERE schemaname = 'matrix'"
}
table_writes() {
    sql -F ' ' -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del
                     FROM pg_stat_user_tables WHERE schemaname = 'matrix'
                    ORDER BY relname"
}

# the first message of each room: the destinations' rows are made
post 1; arrived 1 >/dev/null
post 2; e=$(arrived $DESTS)
echo "first message to $DESTS servers (their rows created):" \
     "$(( (e - s) / 1000000 )) ms"

w0=$(writes)
table_writes > $run/tables.0
post 1; e=$(arrived 1)
one_ms=$(( (e - s) / 1000000 )); one_probe=$probe
w1=$(writes)
table_writes > $run/tables.before
post 2; e=$(arrived $DESTS)
many_ms=$(( (e - s) / 1000000 )); many_probe=$probe
w2=$(writes)
table_writes > $run/tables.after

# transactions per destination while the measured message went out
txns=$(awk -v s=$s -v e=$e '$1 >= s && $1 <= e { n[$2]++ }
    END { min = -1; for (h in n) { if (min < 0 || n[h] < min) min = n[h];
                                   if (n[h] > max) max = n[h]; c++ }
          printf "%d..%d (%d servers)", min, max, c }' $run/received)

by_table() {
    join $1 $2 | awk '{ i = $5 - $2; u = $6 - $3; d = $7 - $4
        if (i + u + d) printf " %s %d/%d/%d,", $1, i, u, d }' | sed 's/,$//'
}
echo "fanout: the measured message's writes by table (ins/upd/del):"
echo "  1 server:$(by_table $run/tables.0 $run/tables.before)"
echo "  $DESTS servers:$(by_table $run/tables.before $run/tables.after)"

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi

echo "fanout: 1 server: all have it in $one_ms ms, $((w1 - w0)) database writes"
echo "fanout: $DESTS servers: all have it in $many_ms ms, $((w2 - w1)) database writes;" \
     "transactions per server meanwhile: $txns"
awk -v a=$((w1 - w0)) -v b=$((w2 - w1)) -v ta=$one_ms -v tb=$many_ms -v d=$DESTS 'BEGIN {
    printf "fanout: %d vs 1 servers: writes ratio %.2f (target ~ 1: not growing with servers), time ratio %.1f (%.2f ms a server)\n", d, b / a, tb / (ta > 0 ? ta : 1), tb / d }'
