#!/bin/sh
# bench/send: inbound PDUs/s: PUT /_matrix/federation/v1/send/{txnId}
# from a remote server joined to a silo room, TXNS transactions of 50
# m.room.message PDUs each, every PDU checked (event hash, signature,
# room, membership, prev events, auth rules against its auth events and
# the room's state), stored and queued for the silo (silo_outbox) before
# the 200; one nginx worker pinned to core 0.  Next to it, the raw
# libsodium ed25519 verify rate on the same core in the same run
# (bench/xmatrix/verify_rate.c), and the ratio: every PDU costs at least
# one verify (its signature), each transaction one more (X-Matrix), so
# the ratio is at most ~0.98; what it is below that is the hashing, the
# JSON, the checks and the database.
#
# The room: bench/lib.sh's generated silo (its own tables behind the
# contract's views), a room of MEMBERS members and MESSAGES messages by
# AUTHORS authors, made a Matrix room (its last HISTORY messages) by the
# first make_join of @s0:remote.test (the fake homeserver,
# t/tools/fake_hs.py), who joins.
#
# The transactions (bench/send/send.py build): one chain of TXNS x 50
# PDUs of @s0:remote.test on top of the room's head, each on the one
# before (depth + 1), auth events create, power levels and the sender's
# join; hashed and signed by the fake, each transaction's X-Matrix
# header signed over its body: all made before anything is timed.
# Then sent one after the other on one keep-alive connection from core
# 1 (each transaction's first PDU names the last of the one before, so
# they cannot overlap); every answer must be 200 with {} for all 50.
#
# The silo: matrix_silo_api points at bench/send/silo_stub.py (core 1),
# which answers every write at once (200 {"message_id": ...}) and stores
# nothing: the silo's own speed is not measured, but the module's
# delivery of the queued writes (one HTTP request per message, in the
# same worker) runs during the measurement, as in production.  SILO=off
# points it at a closed port instead: the writes stay queued (retried
# after a back-off) and the rate is that of accepting alone.
#
# After the run: the room must have TXNS x 50 more m.room.message
# events of remote.test, each queued for the silo once (delivered to the
# stub, or, SILO=off, still in silo_outbox); with the stub, the queue is
# let drain first, and how long that took is printed, with the delivery
# rate (writes/s from the last 200 until the queue is empty).
#
# Then, with the stub, delivery alone: the same TXNS x 50 writes queued
# again (nothing else going on), first all in the one room, then spread
# over ROOMS rooms (rooms of the module made for it); the rate is the
# stub's (its first PUT to its last).  Next to them, the baseline: the
# stub's own rate for as many PUTs one after the other from one client
# on one keep-alive connection (core 0), and the ratios.  One room is
# bound to about the baseline: its writes go one at a time, each after
# the one before is answered.
#
# Figures (2 cores shared with other work, so noisy):  with one database
# transaction per PDU (about six round trips each), 316-351 PDUs/s, ratio
# 0.016-0.017.  With a transaction's PDUs checked and stored room by room
# (sql/006_receive_batch.sql: the room locked once, what the checks need
# read by one statement, the accepted PDUs appended by one), 3,400-4,200
# PDUs/s in most runs (one 2,400), ratio 0.16-0.21 (0.11): the worker is
# then busy about half the time, 40% of it verifying signatures; Postgres
# takes ~5 ms per 50 PDUs (append ~3.5, read ~1.4).
#
# Delivery to the silo, when each pass claimed the first write of each
# room by a statement that sorted the whole queue, then sent them one by
# one and deleted each: 272-300 writes/s after the run (about 4,770 of
# 5,000 left at the last 200, 16-17.5 s to drain); alone, one room
# 319-338/s, 50 rooms 1,869-1,937/s (baseline 5,910-6,435/s: ratios
# 0.05-0.06, 0.30-0.32).  With a room's run of
# up to 32 claimed at once (a skip-scan over the rooms' heads), 16 rooms
# side by side, one statement to settle a run (sql/011_silo_delivery.sql):
# 2,157-2,800/s after the run (about 3,000 left, 1.1-1.4 s to drain);
# alone, one room 2,171-2,757/s, 50 rooms 7,692-8,375/s (baseline
# 2,457-2,821/s in those runs, noisy: ratios 0.77-1.12, 2.73-3.41).
#
#   sh bench/send/run.sh   (TXNS, MEMBERS, MESSAGES, AUTHORS, HISTORY,
#                           SILO, ROOMS, PORT from the env; BENCH_MODULE:
#                           another build of the module, to compare)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

TXNS=${TXNS:-100}
MEMBERS=${MEMBERS:-1000}
MESSAGES=${MESSAGES:-1000}
AUTHORS=${AUTHORS:-50}
HISTORY=${HISTORY:-1000}
SILO=${SILO:-stub}
ROOMS=${ROOMS:-50}
PORT=${PORT:-18453}
SILO_PORT=${SILO_PORT:-18454}
ROOM='!r1:bench.test'
CC=${CC:-cc}

bench_need psql taskset perl $CC
case $SILO in stub|off) ;; *) die "SILO: stub or off" ;; esac
[ $TXNS -ge 1 ] || die "TXNS must be at least 1"

sql() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h $run -U postgres -d bench "$@"
}

t0=$(date +%s)
bench_fed_start send $MEMBERS
bench_silo_room $run bench 1 $MEMBERS $MESSAGES $AUTHORS
echo "silo: a room of $MEMBERS members, $MESSAGES messages by $AUTHORS authors:" \
     "$(($(date +%s) - t0)) s"

# the stub silo, stopped with everything else (bench_fed_cleanup)
stub_stop() {
    [ -f $run/stub.pid ] && kill $(cat $run/stub.pid) 2>/dev/null || true
    bench_fed_cleanup
}
trap stub_stop EXIT
printf 'bench-send-token-%s\n' "$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')" \
    > $run/silo.token
if [ "$SILO" = stub ]; then
    taskset -c 1 /usr/bin/python3 bench/send/silo_stub.py $SILO_PORT \
        > $run/stub.log 2>&1 &
    echo $! > $run/stub.pid
    for i in $(seq 50); do
        grep -q ready $run/stub.log && break
        sleep 0.1
    done
    grep -q ready $run/stub.log || { cat $run/stub.log >&2; die "the stub silo did not start"; }
fi

bench_fed_nginx $run $PORT "matrix_room_history $HISTORY;
    matrix_silo_api http://127.0.0.1:$SILO_PORT/internal/matrix/ token_file=$run/silo.token;"

# the room made, @s0:remote.test joined
taskset -c 1 /usr/bin/python3 bench/fed.py create http://127.0.0.1:$PORT \
    $CONTROL s "$ROOM" > $run/create.out \
    || { cat $run/create.out; tail -20 $run/logs/error.log >&2;
         die "making the room failed"; }
nid=$(sql -c "SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$ROOM'")
sql -c 'ANALYZE matrix.events; ANALYZE matrix.room_state;
        ANALYZE matrix.forward_extremities; ANALYZE matrix.matrix_rooms'

state_id() {
    sql -c "SELECT e.event_id FROM matrix.room_state s
              JOIN matrix.events e ON e.nid = s.event_nid
             WHERE s.room_nid = $nid AND s.type = '$1' AND s.state_key = '$2'"
}
head=$(sql -F ' ' -c "SELECT e.event_id, e.depth + 1
    FROM matrix.forward_extremities f JOIN matrix.events e ON e.nid = f.event_nid
   WHERE f.room_nid = $nid ORDER BY e.depth DESC LIMIT 1")
[ -n "$head" ] || die "the room has no head"

# the memberships queued by the join delivered first (or, SILO=off, left)
[ "$SILO" = stub ] && for i in $(seq 100); do
    [ "$(sql -c 'SELECT count(*) FROM matrix.silo_outbox')" = 0 ] && break
    sleep 0.1
done

t0=$(date +%s)
taskset -c 1 /usr/bin/python3 bench/send/send.py build $CONTROL $run/txns \
    $TXNS "$ROOM" $head "$(state_id m.room.create '')" \
    "$(state_id m.room.power_levels '')" \
    "$(state_id m.room.member '@s0:remote.test')" \
    || die "building the transactions failed"
echo "send: $TXNS transactions of 50 PDUs signed by remote.test" \
     "($(wc -c < $run/txns) bytes): $(($(date +%s) - t0)) s"

before=$(sql -c "SELECT count(*) FROM matrix.events WHERE room_nid = $nid")

taskset -c 1 /usr/bin/python3 bench/send/send.py run http://127.0.0.1:$PORT \
    $run/txns > $run/send.out \
    || { cat $run/send.out; tail -20 $run/logs/error.log >&2;
         die "sending failed"; }
summary=$(grep '^summary ' $run/send.out)
v() { echo "$summary" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# what was accepted is stored and queued for the silo, once each
want=$((TXNS * 50))
stored=$(sql -c "SELECT count(*) FROM matrix.events WHERE room_nid = $nid
                   AND type = 'm.room.message' AND sender = '@s0:remote.test'
                   AND NOT soft_failed")
[ $(($(sql -c "SELECT count(*) FROM matrix.events WHERE room_nid = $nid") - before)) = $want ] \
    && [ "$stored" = $want ] || die "$stored messages stored, not $want"
# each queued for the silo once: given to the stub (the queue let drain
# first: a write under way is both given and still queued), or queued
queued=$(sql -c "SELECT count(*) FROM matrix.silo_outbox WHERE kind = 'message'")
if [ "$SILO" = stub ]; then
    got=$(curl -s http://127.0.0.1:$SILO_PORT/_stub/count | cut -d' ' -f1)
    t1=$(date +%s.%N)
    for i in $(seq 600); do
        [ "$(sql -c 'SELECT count(*) FROM matrix.silo_outbox')" = 0 ] && break
        sleep 0.1
    done
    drained=$(echo "$(date +%s.%N) $t1" | awk '{ printf "%.1f", $1 - $2 }')
    all=$(curl -s http://127.0.0.1:$SILO_PORT/_stub/count | cut -d' ' -f1)
    [ "$all" = $want ] \
        || die "$all messages given to the silo, not $want"
    silo_note="$got of them given to the stub silo by the last 200, $queued still queued then (given in $drained s more: $(awk -v n=$((all - got)) -v s=$drained 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }') writes/s)"
else
    [ "$queued" = $want ] || die "$queued messages queued for the silo, not $want"
    silo_note="all $want queued in silo_outbox (silo off)"
fi
echo "send: $want PDUs stored as $want events; $silo_note"

# Delivery alone: the same writes queued again, nothing else going on,
# in one room, then spread over ROOMS rooms (rooms of the module only:
# the stub takes any silo room); the rate is the stub's, from its first
# PUT to its last.  Next to it, the stub's own rate for as many PUTs one
# after the other from one client on one connection.
deliver() {
    curl -s http://127.0.0.1:$SILO_PORT/_stub/reset >/dev/null
    sql -c "WITH r AS (SELECT array_agg(room_nid ORDER BY room_nid) AS a
                         FROM matrix.matrix_rooms
                        WHERE room_nid = $nid OR room_id LIKE '!deliver-%')
            INSERT INTO matrix.silo_outbox (event_id, room_nid, kind)
            SELECT e.event_id,
                   r.a[1 + (row_number() OVER (ORDER BY e.nid) - 1)
                           % cardinality(r.a)], 'message'
              FROM matrix.events e, r
             WHERE e.room_nid = $nid AND e.type = 'm.room.message'
               AND e.sender = '@s0:remote.test'
             ORDER BY e.nid"
    for i in $(seq 3000); do
        [ "$(sql -c 'SELECT count(*) FROM matrix.silo_outbox')" = 0 ] && break
        sleep 0.1
    done
    [ "$(sql -c 'SELECT count(*) FROM matrix.silo_outbox')" = 0 ] \
        || die "the writes queued again were not all delivered in 300 s"
    curl -s http://127.0.0.1:$SILO_PORT/_stub/count \
        | awk -v want=$want '$3 != want { exit 1 }
                             { printf "%d", ($4 > 0 ? $3 / $4 : 0) }' \
        || die "the stub did not get $want PUTs"
}
if [ "$SILO" = stub ]; then
    one=$(deliver)
    sql -c "INSERT INTO matrix.matrix_rooms (room_id, silo_room_id, room_version)
            SELECT '!deliver-' || g || ':bench.test', 'deliver-' || g, '10'
              FROM generate_series(2, $ROOMS) g"
    many=$(deliver)
    base=$(taskset -c 0 /usr/bin/python3 bench/send/silo_stub.py put $SILO_PORT $want)
    echo "deliver: $want writes queued, delivered to the stub silo: one room" \
         "$one writes/s, $ROOMS rooms $many writes/s; the stub alone," \
         "$want PUTs in turn from one client: $base/s; ratios" \
         "$(awk -v a=$one -v b=$many -v c=$base 'BEGIN { printf "%.2f, %.2f", a / c, b / c }')"
fi

$CC -O2 -Wall -Wextra -o $run/verify_rate bench/xmatrix/verify_rate.c -lsodium \
    || die "cannot build bench/xmatrix/verify_rate.c (libsodium-dev)"
verify=$(taskset -c 0 $run/verify_rate 1.5)

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi

echo "send: $(v pdus) PDUs in $(v seconds) s; a transaction of 50:" \
     "median $(v txn_med_ms) ms, p90 $(v txn_p90_ms) ms"
awk -v r=$(v rate) -v v=$verify 'BEGIN {
    printf "send: %d PDUs/s accepted (one worker, silo '"$SILO"') vs raw ed25519 verify %d/s (one core), ratio %.3f\n", r, v, r / v }'
