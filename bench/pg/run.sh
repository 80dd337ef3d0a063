#!/bin/sh
# bench/pg: requests/s of GET /_matrix/client/v3/profile/{userId}, one
# indexed SELECT through the module's non-blocking libpq pool, next to
# "pgbench -S" (one indexed SELECT per transaction) on the same database
# of the same throwaway cluster in the same run.  Target: ratio >= 0.7.
#
# Fairness:
#  - the same 8 connections to Postgres: nginx runs one worker with
#    "matrix_postgres ... max=8", pgbench runs 8 clients.  The baseline is
#    what Postgres does with 8 connections when nobody is in between.
#  - two baselines: "pgbench -S" as the issue names it (the simple
#    protocol: each SELECT parsed and planned again), which the target is
#    for, and "pgbench -S -M prepared", the protocol the module uses (it
#    prepares its statement once per connection), which is the harder
#    comparison and is printed beside it.
#  - the same kind of lookup: the silo's users sit in a table of their
#    own, 1M rows keyed by localpart (as a silo's users table is keyed by
#    username), read through the contract's view, so the module's SELECT
#    is one primary-key lookup like pgbench's.
#  - the same load generator core: wrk (one thread) and pgbench (one
#    thread) are both pinned to core 1; nginx's single worker is pinned to
#    core 0; the Postgres backends float over both cores, as they would.
#    pgbench alone thus leaves core 0 to Postgres, nginx has to share it:
#    that is the price of the hop, which is what the ratio measures.
#  - wrk keeps 2x as many HTTP connections open as the pool has database
#    connections (16), so that a database connection that frees up finds
#    a waiting request at once, as a pgbench client has its next
#    transaction ready at once; more would only queue inside nginx.
#  - shared_buffers holds the whole table and both indexes, loaded
#    (pg_prewarm) before either runs.
#  - the lookups spread over all 1M users (a random aid per request and
#    per transaction), both warmed up once before the measured rounds;
#    the two are measured alternately, ROUNDS times each, and the best
#    round of each is compared.
#
#   sh bench/pg/run.sh   (DURATION, ROUNDS, SCALE, PORT, PROTOCOL from the env)

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
DB_CONNECTIONS=${DB_CONNECTIONS:-8}
CONNECTIONS=${CONNECTIONS:-$((DB_CONNECTIONS * 2))}
PORT=${PORT:-18449}

ROWS=$((SCALE * 100000))
SERVER=bench.example

bench_need wrk pgbench psql curl taskset


# a short path: unix socket paths are limited to 107 bytes
run=$(mktemp -d /tmp/mxbench-pg-XXXXXX)
chmod 0755 $run

cleanup() {
    [ -f $run/nginx.pid ] && kill $(cat $run/nginx.pid) 2>/dev/null || true
    bench_pg_stop $run
    rm -rf $run
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the cluster, as t/lib/MatrixPg.pm makes it (bench/lib.sh)
bench_pg_start $run 256MB

sql() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h $run -U postgres -d bench "$@"
}

# the data: pgbench's 1M accounts, and 1M silo users behind the
# contract's "users" view, looked up by their primary key
psql -X -q -h $run -U postgres -d postgres -c 'CREATE DATABASE bench'
pgbench -h $run -U postgres -i -q -s $SCALE bench 2>$run/pgbench-init.log \
    || { cat $run/pgbench-init.log >&2; die "pgbench -i failed"; }

sql >/dev/null <<'SQL'
CREATE TABLE silo_users (
    localpart     text PRIMARY KEY,
    id            bigint NOT NULL,
    display_name  text NOT NULL,
    avatar_url    text,
    deactivated   boolean NOT NULL DEFAULT false
);
INSERT INTO silo_users (localpart, id, display_name)
    SELECT 'u' || aid, aid, 'User ' || aid FROM pgbench_accounts;
CREATE SCHEMA matrix_silo;
CREATE VIEW matrix_silo.users AS
    SELECT id::text AS user_id, localpart, display_name, avatar_url,
           deactivated
      FROM silo_users;
VACUUM ANALYZE pgbench_accounts;
VACUUM ANALYZE silo_users;
CREATE EXTENSION pg_prewarm;
SELECT pg_prewarm('pgbench_accounts'), pg_prewarm('pgbench_accounts_pkey'),
       pg_prewarm('silo_users'), pg_prewarm('silo_users_pkey');
SQL

plan=$(sql -c "EXPLAIN SELECT display_name, avatar_url FROM matrix_silo.users
               WHERE localpart = 'u42' AND deactivated IS NOT TRUE")
case $plan in
    *"Index Scan using silo_users_pkey"*) ;;
    *) echo "$plan" >&2; die "the profile lookup is not an index scan" ;;
esac

# nginx, on a copy of the module (bench/lib.sh)
bench_nginx_prepare $run

{ bench_nginx_head $run $run/ngx_http_matrix_module.so; cat <<CONF

    matrix_postgres "host=$run dbname=bench user=postgres" max=$DB_CONNECTIONS timeout=5s;
    matrix_server_name $SERVER;
    matrix_signing_key $run/signing.key;

    server {
        listen 127.0.0.1:$PORT;
        location /_matrix/ { matrix; }
    }
}
CONF
} > $run/nginx.conf

taskset -c 0 /usr/sbin/nginx -p $run -c $run/nginx.conf
sleep 0.3

# one response checked before measuring (the first one migrates "matrix")
url=http://127.0.0.1:$PORT/_matrix/client/v3/profile/@u4242:$SERVER
code=$(curl -s -o $run/body.json -w '%{http_code}' --max-time 30 $url || true)
body=$(cat $run/body.json 2>/dev/null || true)
if [ "$code" != 200 ] || [ "$body" != '{"displayname":"User 4242"}' ]; then
    tail -20 $run/logs/error.log >&2 || true
    die "GET $url: $code $body (expected 200 {\"displayname\":\"User 4242\"})"
fi
echo "GET /_matrix/client/v3/profile/@u4242:$SERVER: $code $body"

# requests/s through nginx; fails on any non-2xx answer or socket error
wrk_rate() {
    taskset -c 1 wrk -t1 -c$CONNECTIONS -d${1}s -s bench/pg/profile.lua \
        http://127.0.0.1:$PORT -- $ROWS $SERVER > $run/wrk.out
    if grep -q -e '^  Non-2xx' -e '^  Socket errors' $run/wrk.out; then
        cat $run/wrk.out >&2
        tail -20 $run/logs/error.log >&2
        die "wrk: errors through nginx"
    fi
    awk '/^Requests\/sec:/ { print int($2) }' $run/wrk.out
}

# transactions/s of pgbench -S, without the initial connection time
pgbench_rate() {
    taskset -c 1 pgbench -h $run -U postgres -n -S -M $2 -T $1 \
        -c $DB_CONNECTIONS -j 1 bench > $run/pgbench.out 2>&1 \
        || { cat $run/pgbench.out >&2; die "pgbench -S failed"; }
    awk '/^tps = / { print int($3) }' $run/pgbench.out
}

w=$(wrk_rate 2); p=$(pgbench_rate 2 simple); m=$(pgbench_rate 2 prepared)
echo "warm-up: nginx $w req/s, pgbench -S $p tps, -M prepared $m tps"

# the rounds, alternating; the best of each side is compared
for i in $(seq $ROUNDS); do
    w=$(wrk_rate $DURATION)
    p=$(pgbench_rate $DURATION simple)
    m=$(pgbench_rate $DURATION prepared)
    echo "round $i: nginx $w req/s, pgbench -S $p tps, -M prepared $m tps"
    echo "$w $p $m" >> $run/rounds
done

if grep -E '\[(alert|crit|error|emerg)\]' $run/logs/error.log >$run/errors; then
    echo "warning: nginx logged $(wc -l <$run/errors) [alert]/[crit]/[error] lines, the first ones:" >&2
    head -5 $run/errors >&2
fi

awk '$1 > w { w = $1 } $2 > p { p = $2 } $3 > m { m = $3 }
     END { printf "pg: %d req/s through nginx vs %d tps pgbench -S -M prepared, ratio %.3f (same protocol)\n", w, m, w / m;
           printf "pg: %d req/s through nginx vs %d tps pgbench -S, ratio %.3f (target >= 0.7)\n", w, p, w / p }' $run/rounds
