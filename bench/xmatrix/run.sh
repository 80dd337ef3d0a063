#!/bin/sh
# bench/xmatrix: requests/s of a cheap federation route authenticated
# with X-Matrix (the origin's key already in the module's cache) next to
# the same work unauthenticated, measured in the same nginx in the same
# run.  Target: ratio >= 0.6 on one core; one ed25519 verification per
# request is the floor, and its raw rate on one core is printed too.
#
# The routes:
#  - authenticated: GET /_matrix/federation/v1/query/profile
#    ?user_id=%40u1%3Abench.test, signed by remote.test: X-Matrix parsed,
#    the origin's key found in the cache, the signature over the request's
#    canonical JSON verified, then one indexed SELECT on the silo's users.
#  - baseline: GET /_matrix/client/v3/profile/@u1:bench.test, the
#    client-server twin: the same profile handler and the same SELECT,
#    without the X-Matrix check.  The difference between the two is what
#    authentication costs (both answer the same {"displayname":"User 1"}).
#
# Two ways, each with its own baseline:
#  - replayed: one Authorization header, signed once by the fake
#    remote.test for exactly this method, URI and destination, sent with
#    every request.  X-Matrix has no nonce or timestamp, so a replay is as
#    valid as the first; the worker remembers the requests it has
#    verified (mx_sigcache), so this measures a peer that repeats itself
#    (a retried transaction, a poll of the same resource).  The target
#    applies here.
#  - distinct: MANY different requests (user_id=u1..uMANY), each with its
#    own signature, cycled through by a wrk Lua script; MANY is 8 times
#    the worker's memory of verified requests, so every request costs an
#    ed25519 verification: the floor.  The baseline cycles through the
#    same users' client-server profiles.
#
# Fairness:
#  - one nginx worker pinned to core 0, wrk (one thread, 16 connections)
#    pinned to core 1; Postgres backends float over both cores, the
#    same for both routes; the same pool (8 connections) serves both.
#  - the key is fetched once (SRV from the test DNS server, TLS to the
#    fake homeserver) by a warming request that must answer 200 before
#    anything is measured; nothing else leaves the host afterwards.
#  - a warm-up round of each, then ROUNDS rounds of each, alternating; the
#    best round of each is compared.  Any non-2xx answer or socket error
#    fails the bench.
#
#   sh bench/xmatrix/run.sh   (DURATION, ROUNDS, CONNECTIONS, PORT from the env)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
DB_CONNECTIONS=${DB_CONNECTIONS:-8}
CONNECTIONS=${CONNECTIONS:-16}
MANY=${MANY:-32768}
PORT=${PORT:-18450}
CC=${CC:-cc}

SERVER=bench.test
FED_URI='/_matrix/federation/v1/query/profile?user_id=%40u1%3Abench.test'
CS_URI="/_matrix/client/v3/profile/@u1:$SERVER"
EXPECTED='{"displayname":"User 1"}'

bench_need wrk psql curl taskset perl $CC


# a short path: unix socket paths are limited to 107 bytes
run=$(mktemp -d /tmp/mxbench-xm-XXXXXX)
chmod 0755 $run

cleanup() {
    [ -f $run/nginx.pid ] && kill $(cat $run/nginx.pid) 2>/dev/null || true
    [ -f $run/peers.pid ] && kill $(cat $run/peers.pid) 2>/dev/null || true
    bench_pg_stop $run
    # the peers' exit removes their own temporary directories
    [ -f $run/peers.pid ] && wait $(cat $run/peers.pid) 2>/dev/null || true
    rm -rf $run
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the raw ed25519 verify rate on nginx's core, before anything else runs
$CC -O2 -Wall -Wextra -o $run/verify_rate bench/xmatrix/verify_rate.c -lsodium
verify=$(taskset -c 0 $run/verify_rate 1.5)

# the peers: the fake remote.test and the DNS server pointing at it,
# and the header remote.test signs for our request
for i in $(seq $MANY); do
    echo "/_matrix/federation/v1/query/profile?user_id=%40u$i%3A$SERVER"
done > $run/fed.uris
for i in $(seq $MANY); do echo "/_matrix/client/v3/profile/@u$i:$SERVER"; done > $run/cs.uris
perl -It/lib bench/xmatrix/peers.pl $run/peers.env GET "$FED_URI" $SERVER \
    $run/fed.uris >$run/peers.log 2>&1 &
echo $! > $run/peers.pid
i=0
while [ ! -f $run/peers.env ]; do
    kill -0 $(cat $run/peers.pid) 2>/dev/null \
        || { cat $run/peers.log >&2; die "the fake homeserver or DNS did not start"; }
    i=$((i + 1))
    [ $i -lt 1200 ] || { cat $run/peers.log >&2; die "the peers took over 120 s"; }
    sleep 0.1
done
. $run/peers.env
case $AUTH in
    "X-Matrix "*) ;;
    *) die "no X-Matrix header from the fake: $AUTH" ;;
esac

# the cluster, as t/lib/MatrixPg.pm makes it (bench/lib.sh)
bench_pg_start $run 128MB

# a few silo users behind the contract's "users" view, keyed by localpart
psql -X -q -h $run -U postgres -d postgres -c 'CREATE DATABASE bench'
psql -X -q -A -t -v ON_ERROR_STOP=1 -v many=$MANY -h $run -U postgres -d bench >/dev/null <<'SQL'
CREATE TABLE silo_users (
    localpart     text PRIMARY KEY,
    id            bigint NOT NULL,
    display_name  text NOT NULL,
    avatar_url    text,
    deactivated   boolean NOT NULL DEFAULT false
);
INSERT INTO silo_users (localpart, id, display_name)
    SELECT 'u' || i, i, 'User ' || i FROM generate_series(1, :many) i;
CREATE SCHEMA matrix_silo;
CREATE VIEW matrix_silo.users AS
    SELECT id::text AS user_id, localpart, display_name, avatar_url,
           deactivated
      FROM silo_users;
VACUUM ANALYZE silo_users;
SQL

# nginx, on a copy of the module (bench/lib.sh)
bench_nginx_prepare $run

{ bench_nginx_head $run $run/ngx_http_matrix_module.so; cat <<CONF

    matrix_postgres "host=$run dbname=bench user=postgres" max=$DB_CONNECTIONS timeout=5s;
    matrix_server_name $SERVER;
    matrix_signing_key $run/signing.key;
    matrix_federation_resolver $DNS ipv6=off;
    matrix_federation_trusted_certificate $CA;
    matrix_federation_allow_ip 127.0.0.0/8;

    server {
        listen 127.0.0.1:$PORT;
        location /_matrix/ { matrix; }
    }
}
CONF
} > $run/nginx.conf

taskset -c 0 /usr/sbin/nginx -p $run -c $run/nginx.conf
sleep 0.3

# GET PATH [AUTHORIZATION]: checks 200 and the profile, else dies
check() {
    code=$(curl -s -o $run/body.json -w '%{http_code}' --max-time 30 \
           ${2:+-H "Authorization: $2"} "http://127.0.0.1:$PORT$1" || true)
    body=$(cat $run/body.json 2>/dev/null || true)
    if [ "$code" != 200 ] || [ "$body" != "$EXPECTED" ]; then
        tail -20 $run/logs/error.log >&2 || true
        die "GET $1: $code $body (expected 200 $EXPECTED)"
    fi
    echo "GET $1${2:+ (X-Matrix)}: $code $body"
}

# the unauthenticated one first (it migrates "matrix"), then the signed
# one, which fetches remote.test's keys and leaves them in the cache
check "$CS_URI"
check "$FED_URI" "$AUTH"

# the worker's CPU time (user + system, in clock ticks) so far
worker=$(ps -o pid= --ppid $(cat $run/nginx.pid) | head -1 | tr -d ' ')
[ -n "$worker" ] || die "no nginx worker"
ticks() { awk '{ print $14 + $15 }' /proc/$worker/stat; }
hz=$(getconf CLK_TCK)

# requests/s through nginx, and into $run/cpu the worker's CPU time per
# request (microseconds); fails on any non-2xx answer or socket error
wrk_rate() {
    t0=$(ticks)
    if [ "$3" = lua ]; then
        taskset -c 1 wrk -t1 -c$CONNECTIONS -d${1}s -s bench/xmatrix/cycle.lua \
            "http://127.0.0.1:$PORT" -- $2 $4 > $run/wrk.out
    elif [ -n "$3" ]; then
        taskset -c 1 wrk -t1 -c$CONNECTIONS -d${1}s -H "Authorization: $3" \
            "http://127.0.0.1:$PORT$2" > $run/wrk.out
    else
        taskset -c 1 wrk -t1 -c$CONNECTIONS -d${1}s \
            "http://127.0.0.1:$PORT$2" > $run/wrk.out
    fi
    if grep -q -e '^  Non-2xx' -e '^  Socket errors' $run/wrk.out; then
        cat $run/wrk.out >&2
        tail -20 $run/logs/error.log >&2
        die "wrk: errors through nginx on $2"
    fi
    awk -v t=$(($(ticks) - t0)) -v hz=$hz '
        /^ +[0-9]+ requests in/ { printf "%.1f\n", t / hz * 1e6 / $1 > "/dev/stderr" }
        /^Requests\/sec:/ { print int($2) }' $run/wrk.out 2>$run/cpu
}

a=$(wrk_rate 2 "$FED_URI" "$AUTH"); u=$(wrk_rate 2 "$CS_URI")
echo "warm-up: authenticated $a req/s, unauthenticated $u req/s"

for i in $(seq $ROUNDS); do
    a=$(wrk_rate $DURATION "$FED_URI" "$AUTH"); ac=$(cat $run/cpu)
    u=$(wrk_rate $DURATION "$CS_URI"); uc=$(cat $run/cpu)
    echo "round $i, replayed: authenticated $a req/s ($ac us of worker CPU each), unauthenticated $u req/s ($uc us)"
    echo "$a $u $ac $uc" >> $run/rounds
done

a=$(wrk_rate 2 $run/fed.uris lua $run/fed.uris.auth); u=$(wrk_rate 2 $run/cs.uris lua)
echo "warm-up, distinct: authenticated $a req/s, unauthenticated $u req/s"

for i in $(seq $ROUNDS); do
    a=$(wrk_rate $DURATION $run/fed.uris lua $run/fed.uris.auth); ac=$(cat $run/cpu)
    u=$(wrk_rate $DURATION $run/cs.uris lua); uc=$(cat $run/cpu)
    echo "round $i, distinct: authenticated $a req/s ($ac us of worker CPU each), unauthenticated $u req/s ($uc us)"
    echo "$a $u $ac $uc" >> $run/distinct
done

# remote.test's keys were fetched by the warming request only
fetches=$(curl -sf "$CONTROL/_fake/requests?endpoint=key" \
          | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' || true)
[ "$fetches" = 1 ] || echo "warning: remote.test's keys fetched ${fetches:-?} times, not once" >&2

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi

awk -v v=$verify '
    $1 > a { a = $1; ac = $3 } $2 > u { u = $2; uc = $4 }
    END { printf "xmatrix: replayed: nginx worker CPU per request in the best rounds: %.1f us authenticated, %.1f us unauthenticated (+%.1f us)\n", ac, uc, ac - uc;
          printf "xmatrix: replayed: %d req/s authenticated vs %d req/s unauthenticated, ratio %.3f (target >= 0.6)\n", a, u, a / u }' $run/rounds
awk -v v=$verify '
    $1 > a { a = $1; ac = $3 } $2 > u { u = $2; uc = $4 }
    END { printf "xmatrix: distinct: nginx worker CPU per request in the best rounds: %.1f us authenticated, %.1f us unauthenticated (+%.1f us; one verify: %.1f us)\n", ac, uc, ac - uc, 1e6 / v;
          printf "xmatrix: distinct: %d req/s authenticated vs %d req/s unauthenticated, ratio %.3f (every request verified)\n", a, u, a / u;
          printf "xmatrix: raw ed25519 verify %d/s on one core (one verify per request alone would allow %.3f of the distinct baseline)\n", v, 1 / (1 + u / v) }' $run/distinct
