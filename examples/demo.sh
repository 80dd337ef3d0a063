#!/usr/bin/env bash
# The demo: the reference silo (examples/silo) on a Postgres cluster of its
# own, and nginx with the module in front of it, answering as the Matrix
# server "localhost:8448".  Everything lives in examples/demo-run/; no
# system service is used or changed.  Run through "./dev demo".
#
#   examples/demo.sh          start (again) and show what it serves
#   examples/demo.sh stop     stop nginx, the silo and Postgres

set -euo pipefail
cd "$(dirname "$0")/.."

repo=$(pwd)
run=$repo/examples/demo-run
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgdir=$run/pg
silo_port=8090
conninfo="host=$pgdir dbname=chat user=postgres"

# initdb and postgres refuse root: as root they run as "postgres"
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env -C / "$@"
    else
        "$@"
    fi
}

stop() {
    if [ -f $run/nginx.pid ] && kill -0 "$(cat $run/nginx.pid)" 2>/dev/null; then
        kill -QUIT "$(cat $run/nginx.pid)"
    fi
    if [ -f $run/silo.pid ] && kill -0 "$(cat $run/silo.pid)" 2>/dev/null; then
        kill "$(cat $run/silo.pid)"
    fi
    local real
    real=$(readlink -f $pgdir || true)
    if [ -n "$real" ] && [ -f $real/data/postmaster.pid ]; then
        as_pg $pgbin/pg_ctl -D $real/data -m fast -w stop >/dev/null || true
    fi
    rm -f $run/silo.pid
}

if [ "${1:-}" = stop ]; then
    stop
    echo "demo stopped"
    exit 0
fi

stop
mkdir -p $run/logs $run/tmp

# --- Postgres: a cluster under examples/demo-run ----------------------------

if [ ! -e $pgdir ]; then
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x $run; then
        # the postgres user cannot reach into this checkout (under /root,
        # say): the cluster lives outside it, linked from here
        outside=$(mktemp -d /var/tmp/ngx-matrix-demo-XXXXXX)
        chmod 755 $outside
        ln -s $outside $pgdir
    else
        mkdir -p $pgdir
    fi
fi

# the server is given the real path: the link may be out of its reach
pgdir=$(readlink -f $pgdir)
conninfo="host=$pgdir dbname=chat user=postgres"

if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres $pgdir
fi

if [ ! -f $pgdir/data/PG_VERSION ]; then
    echo "== initdb $pgdir/data"
    as_pg $pgbin/initdb -D $pgdir/data -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >$run/logs/initdb.log
    cat >>$pgdir/data/postgresql.conf <<EOF
listen_addresses = ''
unix_socket_directories = '$pgdir'
unix_socket_permissions = 0777
EOF
fi

as_pg $pgbin/pg_ctl -D $pgdir/data -w -l $pgdir/server.log start >/dev/null

psql() { command psql -X -q -v ON_ERROR_STOP=1 -h $pgdir -U postgres "$@"; }

if ! psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'chat'" | grep -q 1; then
    echo "== the silo's database: schema and seed data"
    psql -d postgres -c 'CREATE DATABASE chat'
    psql -d chat -f examples/silo/schema.sql -f examples/silo/seed.sql
fi

echo "== the module's schema: matrix-tool migrate"
build/matrix-tool migrate "$conninfo"

if ! psql -d chat -tAc "SELECT 1 FROM pg_namespace WHERE nspname = 'matrix_silo'" | grep -q 1; then
    echo "== the operator's mapping: examples/silo/matrix.sql"
    psql -d chat -f examples/silo/matrix.sql
fi

# --- the silo ----------------------------------------------------------------

if [ ! -f $run/silo.token ]; then
    (umask 077; openssl rand -hex 32 > $run/silo.token)
fi

/usr/bin/python3 examples/silo/silo.py --dsn "$conninfo" \
    --listen 127.0.0.1:$silo_port --internal-token-file $run/silo.token \
    >$run/logs/silo.log 2>&1 &
echo $! > $run/silo.pid

for _ in $(seq 50); do
    curl -sf http://127.0.0.1:$silo_port/healthz >/dev/null && break
    sleep 0.2
done
curl -sf http://127.0.0.1:$silo_port/healthz >/dev/null \
    || { echo "the silo did not start:"; tail $run/logs/silo.log; exit 1; }

# --- nginx with the module ---------------------------------------------------

if [ ! -f $run/signing.key ]; then
    build/matrix-tool keygen $run/signing.key
fi

if [ ! -f $run/tls.crt ]; then
    openssl req -x509 -newkey ed25519 -nodes -days 30 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout $run/tls.key -out $run/tls.crt 2>/dev/null
fi

sed -e "s|@RUN@|$run|g" -e "s|@MODULE@|$repo/build/ngx_http_matrix_module.so|g" \
    -e "s|@PGDIR@|$pgdir|g" -e "s|@SILO@|127.0.0.1:$silo_port|g" \
    examples/demo.conf > $run/nginx.conf

/usr/sbin/nginx -p $run -c $run/nginx.conf -t -q
/usr/sbin/nginx -p $run -c $run/nginx.conf

for _ in $(seq 50); do
    [ -f $run/nginx.pid ] && curl -sf http://127.0.0.1:8008/_matrix/federation/v1/version >/dev/null && break
    sleep 0.1
done

show() {
    echo
    echo "== $1"
    shift
    "$@"
    echo
}

echo
echo "nginx with ngx_http_matrix_module: Matrix server localhost:8448 (TLS on 8448,"
echo "plain HTTP on 8008), in front of the silo on 127.0.0.1:$silo_port."

show "the key document, checked by python3-signedjson" \
    sh -c "curl -sk https://localhost:8448/_matrix/key/v2/server \
           | tee $run/key.json | /usr/bin/python3 t/tools/check_key_doc.py localhost:8448"

show "a silo user's Matrix profile, read live from the silo's users view" \
    curl -sk "https://localhost:8448/_matrix/client/v3/profile/@alice:localhost:8448"

token=$(curl -sf -X POST http://127.0.0.1:$silo_port/api/login \
        -H 'Content-Type: application/json' \
        -d '{"username": "alice", "password": "alice-password"}' \
        | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

curl -sf -X PATCH http://127.0.0.1:$silo_port/api/me \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"display_name": "Alice (renamed in the silo)"}' >/dev/null

show "renamed in the silo: the Matrix profile follows, nothing copied" \
    curl -sk "https://localhost:8448/_matrix/client/v3/profile/@alice:localhost:8448"

curl -sf -X PATCH http://127.0.0.1:$silo_port/api/me \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"display_name": "Alice Liddell"}' >/dev/null

room=$(psql -d chat -tAc "SELECT room_id FROM matrix_silo.rooms WHERE alias = 'general'")
curl -sf -X POST http://127.0.0.1:$silo_port/api/rooms/$room/messages \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"text": "Hello from the silo, *Matrix*!"}' >/dev/null

show "a message posted in the silo lands in the module's change feed" \
    psql -d chat -c "SELECT seq, kind, message_id, room_id FROM matrix.silo_changes ORDER BY seq DESC LIMIT 3"

echo "== Try it"
echo "   curl -k https://localhost:8448/_matrix/client/v3/profile/@bob:localhost:8448"
echo "   curl -k https://localhost:8448/_matrix/key/v2/server"
echo "   the silo's own API:  curl http://127.0.0.1:$silo_port/api/rooms  (see examples/silo/README.md)"
echo "   the database:        psql -h $pgdir -U postgres chat"
echo "   logs:                $run/logs/"
echo "   stop everything:     make demo-stop"
