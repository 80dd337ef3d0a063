#!/usr/bin/env bash
# The demo: the reference silo (examples/silo) on a Postgres cluster of its
# own, and nginx with the module in front of it, answering as the Matrix
# server "localhost:8448".  Everything lives in examples/demo-run/; no
# system service is used or changed.  Run through "./dev demo".
#
#   examples/demo.sh          start (again) and show what it serves
#   examples/demo.sh stop     stop nginx, the silo, the visiting server
#                             and Postgres
#
# Federation is over TLS with a certificate from a CA made for the demo
# (examples/demo-run/tls/ca.crt).  The module's federation client trusts
# the system's CAs, the demo's, and the CA (PEM) in $DEMO_TRUSTED_CA when
# set: the CA of a homeserver of your own on this machine (README.md, "Try
# it with a real homeserver").  Loopback addresses are allowed for
# federation, and the module's resolver is a small DNS server that says
# "localhost" and "*.localhost" are 127.0.0.1 (examples/demo-peer.pl).

set -euo pipefail
cd "$(dirname "$0")/.."

repo=$(pwd)
run=$repo/examples/demo-run
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgdir=$run/pg
tls=$run/tls
silo_port=8090
fed_port=8448
peer_port=8450
server_name=localhost:$fed_port
conninfo="host=$pgdir dbname=chat user=postgres"

# initdb and postgres refuse root: as root they run as "postgres"
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env -C / "$@"
    else
        "$@"
    fi
}

die() {
    echo "demo: $*" >&2
    exit 1
}

stop() {
    if [ -f $run/peer.pid ] && kill -0 "$(cat $run/peer.pid)" 2>/dev/null; then
        kill "$(cat $run/peer.pid)"
        for _ in $(seq 50); do
            kill -0 "$(cat $run/peer.pid)" 2>/dev/null || break
            sleep 0.1
        done
    fi
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
    rm -f $run/silo.pid $run/peer.pid $run/peer.env
}

if [ "${1:-}" = stop ]; then
    stop
    echo "demo stopped"
    exit 0
fi

if [ -n "${DEMO_TRUSTED_CA:-}" ]; then
    [ -r "$DEMO_TRUSTED_CA" ] || die "DEMO_TRUSTED_CA: cannot read $DEMO_TRUSTED_CA"
    openssl x509 -in "$DEMO_TRUSTED_CA" -noout 2>/dev/null \
        || die "DEMO_TRUSTED_CA: $DEMO_TRUSTED_CA holds no PEM certificate"
    DEMO_TRUSTED_CA=$(readlink -f "$DEMO_TRUSTED_CA")
fi

stop
mkdir -p $run/logs $run/tmp

# ports the demo listens on: in use by something else is a clear error now
# rather than a confusing one later
for port in $silo_port $fed_port $peer_port; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        die "127.0.0.1:$port is in use by another program (the demo needs it)"
    fi
done

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

# --- TLS: a CA made for the demo, and nginx's certificate from it ----------

# t/tools/make_test_ca.sh (openssl) makes the CA once, and each certificate
# that is missing: nginx's, and the visiting server's (localhost, default);
# one that expires within a day is made again.  Others (a homeserver's of
# yours, README.md) are left alone.
for crt in $tls/demo-server.crt $tls/localhost.crt $tls/default.crt; do
    [ -f "$crt" ] || continue
    if ! openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1; then
        rm -f "$crt" "${crt%.crt}.key"
    fi
done
if [ ! -f $tls/demo-server.crt ]; then
    t/tools/make_test_ca.sh --days 365 --out demo-server $tls \
        localhost,127.0.0.1,::1 >/dev/null \
        || die "could not make the demo's certificates in $tls"
fi

# --- the visiting server: the tests' fake homeserver, and the demo's DNS ----

if [ ! -f $run/visitor.key ]; then
    build/matrix-tool keygen $run/visitor.key >/dev/null
fi

perl -It/lib examples/demo-peer.pl $run/peer.env $tls $run/visitor.key $peer_port \
    </dev/null >/dev/null 2>$run/logs/peer.log &
echo $! > $run/peer.pid

for _ in $(seq 100); do
    [ -f $run/peer.env ] && break
    kill -0 "$(cat $run/peer.pid)" 2>/dev/null || break
    sleep 0.2
done
[ -f $run/peer.env ] \
    || { cat $run/logs/peer.log >&2; die "the visiting server did not start"; }
. $run/peer.env

# --- nginx with the module ---------------------------------------------------

if [ ! -f $run/signing.key ]; then
    build/matrix-tool keygen $run/signing.key
fi

# the CAs the module's federation client trusts: the system's, the demo's
# and $DEMO_TRUSTED_CA
{
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cat /etc/ssl/certs/ca-certificates.crt
    fi
    cat $tls/ca.crt
    if [ -n "${DEMO_TRUSTED_CA:-}" ]; then
        cat "$DEMO_TRUSTED_CA"
    fi
} > $tls/trusted.crt

sed -e "s|@RUN@|$run|g" -e "s|@MODULE@|$repo/build/ngx_http_matrix_module.so|g" \
    -e "s|@PGDIR@|$pgdir|g" -e "s|@SILO@|127.0.0.1:$silo_port|g" \
    -e "s|@SERVER_NAME@|$server_name|g" -e "s|@PORT@|$fed_port|g" \
    -e "s|@RESOLVER@|$PEER_DNS|g" -e "s|@TLS@|$tls|g" \
    examples/demo.conf > $run/nginx.conf

/usr/sbin/nginx -p $run -c $run/nginx.conf -t -q
/usr/sbin/nginx -p $run -c $run/nginx.conf

# curl: the demo's certificate, checked against the demo's CA
fcurl() { curl -sS --cacert $tls/ca.crt "$@"; }
base=https://$server_name

for _ in $(seq 50); do
    [ -f $run/nginx.pid ] && fcurl -f -o /dev/null $base/_matrix/federation/v1/version 2>/dev/null && break
    sleep 0.1
done
fcurl -f -o /dev/null $base/_matrix/federation/v1/version \
    || { tail $run/logs/error.log >&2; die "nginx does not answer on $base"; }

show() {
    echo
    echo "== $1"
    shift
    "$@"
    echo
}

echo
echo "nginx with ngx_http_matrix_module: Matrix server $server_name (TLS on"
echo "127.0.0.1:$fed_port), in front of the silo on 127.0.0.1:$silo_port; a visiting"
echo "Matrix server $PEER_NAME (the tests' fake homeserver)."

show "the key document, checked by python3-signedjson" \
    sh -c "curl -sS --cacert $tls/ca.crt $base/_matrix/key/v2/server \
           | tee $run/key.json | /usr/bin/python3 t/tools/check_key_doc.py $server_name"

show "a silo user's Matrix profile, read live from the silo's users view" \
    fcurl "$base/_matrix/client/v3/profile/@alice:$server_name"

token=$(curl -sf -X POST http://127.0.0.1:$silo_port/api/login \
        -H 'Content-Type: application/json' \
        -d '{"username": "alice", "password": "alice-password"}' \
        | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

curl -sf -X PATCH http://127.0.0.1:$silo_port/api/me \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"display_name": "Alice (renamed in the silo)"}' >/dev/null

show "renamed in the silo: the Matrix profile follows, nothing copied" \
    fcurl "$base/_matrix/client/v3/profile/@alice:$server_name"

curl -sf -X PATCH http://127.0.0.1:$silo_port/api/me \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"display_name": "Alice Liddell"}' >/dev/null

room=$(psql -d chat -tAc "SELECT room_id FROM matrix_silo.rooms WHERE alias = 'general'")
curl -sf -X POST http://127.0.0.1:$silo_port/api/rooms/$room/messages \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"text": "Hello from the silo, *Matrix*!"}' >/dev/null

show "a message posted in the silo lands in the module's change feed" \
    psql -d chat -c "SELECT seq, kind, message_id, room_id FROM matrix.silo_changes ORDER BY seq DESC LIMIT 3"

/usr/bin/python3 examples/demo-visit.py --control "$PEER_CONTROL" \
    --name "$PEER_NAME" --server $server_name --cafile $tls/ca.crt \
    --alias "#general:$server_name" \
    || { echo "(logs: $run/logs/error.log, $run/logs/peer.log)" >&2; exit 1; }
echo

echo "== Try it"
echo "   curl --cacert $tls/ca.crt $base/_matrix/key/v2/server"
echo "   curl --cacert $tls/ca.crt $base/_matrix/client/v3/profile/@bob:$server_name"
echo "   federate with a homeserver of yours on this machine: README.md, \"Try it"
echo "   with a real homeserver\" (its CA: DEMO_TRUSTED_CA=FILE make demo)"
echo "   the silo's own API:  curl http://127.0.0.1:$silo_port/api/rooms  (see examples/silo/README.md)"
echo "   the database:        psql -h $pgdir -U postgres chat"
echo "   logs:                $run/logs/"
echo
echo "Running in the background: Postgres, the silo, nginx, the visiting server."
echo "Stop everything:        make demo-stop"
