#!/bin/sh
# bench/join: a remote server's users join a silo room over federation
# (make_join, then send_join v2 of the event remote.test signs), in a room
# of SMALL members and in a room of MEMBERS members, the same run, the
# same nginx.  Target: the send_join answer's size and time do not grow
# with the member count: big/small ratio ~ 1.
#
# Why they should not: the module's rooms have lazy membership.  A room's
# Matrix events are made at its first make_join from the silo (state, and
# its last matrix_room_history messages, each author's join just before
# their first one); silo members who never spoke in that history have no
# member event, so the state a joining server gets grows with the
# history's authors, never with room_members.
#
# The rooms (bench/lib.sh bench_silo_room: the silo's own tables behind
# the contract's four views, made with generate_series), each with
# MESSAGES messages:
#   small  SMALL members, AUTHORS_SMALL of them writing in turn
#   big    MEMBERS members, the same AUTHORS_SMALL authors: only the
#          member count differs from small; the target's comparison
#   busy   MEMBERS members, AUTHORS authors: a realistic big room, whose
#          state grows with its authors (printed for information)
# A few admins and moderators in each (one in 25,000 and one in 10,000).
#
# For each room: the first make_join, which makes the room's events, is
# timed alone (the one-time creation cost), then JOINS new users
# @jN:remote.test each make a make_join + send_join, one after the other
# (bench/fed.py: the fake's signing is not in the times).  Printed: the
# medians and 90th percentiles, the send_join answer's size, and its
# state's m.room.member events.  Each join adds one member to the state,
# the same in every room.
#
# One nginx worker pinned to core 0, the driver to core 1; one request at
# a time (latency, not throughput).
#
# Between the creation and the joins the module's tables are ANALYZEd,
# as autovacuum would do within a minute (STATS=0: not).
#
#   sh bench/join/run.sh   (MEMBERS, SMALL, MESSAGES, AUTHORS,
#                           AUTHORS_SMALL, JOINS, HISTORY, STATS, PORT
#                           from the env)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

MEMBERS=${MEMBERS:-100000}
SMALL=${SMALL:-100}
MESSAGES=${MESSAGES:-100000}
AUTHORS=${AUTHORS:-1000}
AUTHORS_SMALL=${AUTHORS_SMALL:-50}
JOINS=${JOINS:-50}
HISTORY=${HISTORY:-1000}
STATS=${STATS:-1}
PORT=${PORT:-18451}

bench_need psql taskset perl
[ $AUTHORS_SMALL -le $SMALL ] || die "AUTHORS_SMALL ($AUTHORS_SMALL) > SMALL ($SMALL)"
[ $AUTHORS -le $MEMBERS ] || die "AUTHORS ($AUTHORS) > MEMBERS ($MEMBERS)"
[ $JOINS -ge 1 ] || die "JOINS must be at least 1"


t0=$(date +%s)
bench_fed_start join $MEMBERS
bench_silo_room $run bench 1 $SMALL $MESSAGES $AUTHORS_SMALL
bench_silo_room $run bench 2 $MEMBERS $MESSAGES $AUTHORS_SMALL
bench_silo_room $run bench 3 $MEMBERS $MESSAGES $AUTHORS
echo "silo: $MEMBERS users; rooms small ($SMALL members), big and busy" \
     "($MEMBERS members), $MESSAGES messages each: $(($(date +%s) - t0)) s"

bench_fed_nginx $run $PORT "matrix_room_history $HISTORY;"

ROOMS='!r1:bench.test !r2:bench.test !r3:bench.test'

# CMD ARGS...: bench/fed.py CMD, its summary lines kept in $run/summary
fed() {
    cmd=$1
    shift
    taskset -c 1 /usr/bin/python3 bench/fed.py $cmd http://127.0.0.1:$PORT \
        $CONTROL "$@" > $run/fed.out \
        || { cat $run/fed.out; tail -20 $run/logs/error.log >&2;
             die "fed.py $cmd failed"; }
    grep -v '^summary ' $run/fed.out | sed -e 's/^!r1:/small !r1:/' \
        -e 's/^!r2:/big !r2:/' -e 's/^!r3:/busy !r3:/'
    grep '^summary ' $run/fed.out >> $run/summary
}

fed create j $ROOMS

# the statistics autovacuum would gather within a minute: without them
# the planner takes the module's new tables for empty (STATS=0: as is)
if [ "$STATS" = 1 ]; then
    psql -X -q -h $run -U postgres -d bench -c 'ANALYZE matrix.events;
        ANALYZE matrix.room_state; ANALYZE matrix.forward_extremities;
        ANALYZE matrix.matrix_rooms'
fi

fed join $JOINS j $ROOMS

# NAME KEY: from the summary of room NAME
v() {
    case $1 in small) r='!r1:' ;; big) r='!r2:' ;; busy) r='!r3:' ;; esac
    grep "^summary $r" $run/summary | tr ' ' '\n' | sed -n "s/^$2=//p"
}

for room in small big busy; do
    case $room in
        small) m=$SMALL a=$AUTHORS_SMALL ;;
        big) m=$MEMBERS a=$AUTHORS_SMALL ;;
        busy) m=$MEMBERS a=$AUTHORS ;;
    esac
    echo "join: $room: $m members, $a authors: created in $(v $room create_ms) ms;" \
         "make_join+send_join median $(v $room pair_med) ms, p90 $(v $room pair_p90) ms" \
         "(make_join $(v $room mj_med), send_join $(v $room sj_med));" \
         "send_join $(v $room bytes_first)..$(v $room bytes_last) bytes," \
         "state $(v $room state) events, $(v $room members) m.room.member," \
         "auth chain $(v $room chain)"
done

awk -v ts=$(v small pair_med) -v tb=$(v big pair_med) \
    -v ss=$(v small bytes_last) -v sb=$(v big bytes_last) \
    -v m=$MEMBERS -v s=$SMALL 'BEGIN {
    printf "join: %d vs %d members (same authors): time ratio %.3f, send_join size ratio %.3f (target ~ 1: not growing with members)\n", m, s, tb / ts, sb / ss }'
awk -v tb=$(v big pair_med) -v tu=$(v busy pair_med) \
    -v sb=$(v big bytes_last) -v su=$(v busy bytes_last) \
    -v a=$AUTHORS -v s=$AUTHORS_SMALL 'BEGIN {
    printf "join: %d vs %d authors (same members): time ratio %.3f, size ratio %.3f (the state grows with the history authors)\n", a, s, tu / tb, su / sb }'

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi
