# Shared by the benchmarks (sourced with ". bench/lib.sh" from the top of
# the checkout): a throwaway Postgres cluster as t/lib/MatrixPg.pm makes
# it, and the part of nginx.conf every benchmark's nginx has.
#
#   die MESSAGE                           "bench/NAME: MESSAGE", exit 1
#   bench_need TOOL ...                   the build, PostgreSQL and TOOLs, or die
#   bench_pg_start DIR [SHARED_BUFFERS]   a cluster in DIR/data, socket in DIR
#   bench_pg_stop DIR
#   bench_nginx_prepare DIR               DIR/logs, a copy of the module, a key
#   bench_nginx_head DIR MODULE           load_module ... "http {" and temp paths

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# initdb and postgres refuse to run as root; from / in case the postgres
# user cannot reach this checkout (under /root, say)
bench_as_pg=""
if [ "$(id -u)" = 0 ]; then
    bench_as_pg="runuser -u postgres --"
fi

pg() { (cd / && $bench_as_pg "$@"); }

die() { echo "bench/$(basename "$(dirname "$0")"): $*" >&2; exit 1; }

bench_need() {
    [ -f build/ngx_http_matrix_module.so ] || die "no build/ngx_http_matrix_module.so: run make"
    [ -x build/matrix-tool ] || die "no build/matrix-tool: run make"
    [ -x $PG_BIN/postgres ] || die "no PostgreSQL 15 in $PG_BIN (apt-get install postgresql)"
    for t in "$@"; do
        command -v $t >/dev/null 2>&1 || die "$t not found (make deps)"
    done
}

# the tests' initdb'd template when there is one (a tenth of the time),
# else initdb
bench_pg_start() {
    if [ -f build/pg-template/PG_VERSION ] \
        && [ "$(cat build/pg-template/PG_VERSION)" = 15 ]
    then
        cp -a build/pg-template $1/data
    else
        mkdir -m 0700 $1/data
        [ -n "$bench_as_pg" ] && chown postgres: $1/data
        pg $PG_BIN/initdb -D $1/data -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 --no-sync >/dev/null
    fi
    [ -n "$bench_as_pg" ] && chown -R postgres: $1

    cat >> $1/data/postgresql.conf <<CONF
listen_addresses = ''
unix_socket_directories = '$1'
unix_socket_permissions = 0777
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = ${2:-128MB}
log_min_messages = warning
CONF

    pg $PG_BIN/pg_ctl -D $1/data -w -t 60 -l $1/server.log start >/dev/null
}

bench_pg_stop() {
    if [ -f $1/data/postmaster.pid ]; then
        pg $PG_BIN/pg_ctl -D $1/data -w -m immediate stop >/dev/null 2>&1 || true
    fi
}

# on a copy of the module: "make" elsewhere in this checkout replaces
# build/ngx_http_matrix_module.so, and a worker must keep what it mapped
# (BENCH_MODULE: another build's, to compare)
bench_nginx_prepare() {
    mkdir -p $1/logs
    cp ${BENCH_MODULE:-build/ngx_http_matrix_module.so} $1/ngx_http_matrix_module.so
    build/matrix-tool keygen $1/signing.key >/dev/null
}

bench_nginx_head() {
    cat <<CONF
load_module $2;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
CONF
}

# --- federation rooms (bench/join, bench/backfill) --------------------------
#
#   bench_fed_start NAME USERS        all of the below in a new $run
#                                     (/tmp/mxbench-NAME-*), removed with
#                                     everything started on exit: the peers,
#                                     a cluster, the silo in database "bench"
#                                     with USERS users, "matrix" migrated;
#                                     prints and exits on failure
#   bench_peers_start DIR             the fake remote.test and its DNS
#                                     (bench/xmatrix/peers.pl): sets DNS, CA,
#                                     CONTROL; stopped by bench_peers_stop
#   bench_peers_stop DIR
#   bench_fed_nginx DIR PORT [LINES] nginx (one worker, on core 0) serving
#                                     bench.test's federation routes from
#                                     database "bench", remote.test reachable
#                                     (after bench_peers_start); LINES: more
#                                     http{} directives
#   bench_silo_make DIR DB USERS      a silo in DB: its own tables behind the
#                                     contract's four views (matrix_silo),
#                                     with the indexes the contract asks for,
#                                     and USERS users u1..uUSERS
#   bench_silo_room DIR DB ID MEMBERS MESSAGES AUTHORS
#                                     silo room ID (public, alias rID): users
#                                     1..MEMBERS its members (a few admins and
#                                     moderators), MESSAGES messages written
#                                     in turn by users 1..AUTHORS, one a
#                                     second, every 20th a reply to the one
#                                     before; "matrix" must be migrated first
#                                     and the room gets Matrix room ID
#                                     !rID:bench.test (version 10)

bench_fed_start() {
    # a short path: unix socket paths are limited to 107 bytes
    run=$(mktemp -d /tmp/mxbench-$1-XXXXXX)
    chmod 0755 $run
    trap bench_fed_cleanup EXIT
    trap 'exit 130' INT TERM

    bench_peers_start $run || { echo "bench/$1: no peers" >&2; exit 1; }
    bench_pg_start $run 256MB
    bench_silo_make $run bench $2
    build/matrix-tool migrate "host=$run dbname=bench user=postgres" \
        >/dev/null || { echo "bench/$1: matrix-tool migrate failed" >&2;
                        exit 1; }
}

bench_fed_cleanup() {
    [ -f $run/nginx.pid ] && kill $(cat $run/nginx.pid) 2>/dev/null || true
    bench_peers_stop $run
    bench_pg_stop $run
    rm -rf $run
}

bench_peers_start() {
    perl -It/lib bench/xmatrix/peers.pl $1/peers.env GET / bench.test \
        >$1/peers.log 2>&1 &
    echo $! > $1/peers.pid
    bench_i=0
    while [ ! -f $1/peers.env ]; do
        kill -0 $(cat $1/peers.pid) 2>/dev/null || {
            cat $1/peers.log >&2
            echo "the fake homeserver or DNS did not start" >&2
            return 1
        }
        bench_i=$((bench_i + 1))
        [ $bench_i -lt 1200 ] || { cat $1/peers.log >&2;
                                   echo "the peers took over 120 s" >&2;
                                   return 1; }
        sleep 0.1
    done
    . $1/peers.env
}

bench_peers_stop() {
    if [ -f $1/peers.pid ]; then
        kill $(cat $1/peers.pid) 2>/dev/null || true
        # its exit removes the fake's temporary directories
        wait $(cat $1/peers.pid) 2>/dev/null || true
    fi
}

bench_fed_nginx() {
    bench_nginx_prepare $1
    { bench_nginx_head $1 $1/ngx_http_matrix_module.so; cat <<CONF

    matrix_postgres "host=$1 dbname=bench user=postgres" max=8 timeout=600s;
    matrix_server_name bench.test;
    matrix_signing_key $1/signing.key;
    matrix_federation_resolver $DNS ipv6=off;
    matrix_federation_trusted_certificate $CA;
    matrix_federation_allow_ip 127.0.0.0/8;
    client_body_buffer_size 1m;
    $3

    server {
        listen 127.0.0.1:$2;
        location /_matrix/ { matrix; }
    }
}
CONF
    } > $1/nginx.conf
    taskset -c 0 /usr/sbin/nginx -p $1 -c $1/nginx.conf
    sleep 0.3
}

bench_silo_make() {
    psql -X -q -h $1 -U postgres -d postgres -c "CREATE DATABASE $2"
    psql -X -q -A -t -v ON_ERROR_STOP=1 -v users=$3 -h $1 -U postgres -d $2 \
        >/dev/null <<'SQL'
CREATE SCHEMA silo;
CREATE TABLE silo.users (
    id            bigint PRIMARY KEY,
    handle        text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    avatar_url    text,
    deactivated   boolean NOT NULL DEFAULT false
);
CREATE TABLE silo.rooms (
    id            bigint PRIMARY KEY,
    slug          text UNIQUE,
    name          text NOT NULL,
    topic         text,
    created_at    timestamptz NOT NULL,
    member_count  bigint NOT NULL DEFAULT 0    -- kept by the silo
);
CREATE TABLE silo.memberships (
    room_id    bigint NOT NULL REFERENCES silo.rooms,
    user_id    bigint NOT NULL REFERENCES silo.users,
    role       text NOT NULL,
    joined_at  timestamptz NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE silo.messages (
    id               bigint PRIMARY KEY,
    room_id          bigint NOT NULL REFERENCES silo.rooms,
    user_id          bigint NOT NULL REFERENCES silo.users,
    source           text NOT NULL,
    html             text,
    created_at       timestamptz NOT NULL,
    edited_at        timestamptz,
    deleted_at       timestamptz,
    reply_to         bigint,
    thread_root      bigint,
    matrix_event_id  text
);

INSERT INTO silo.users (id, handle, display_name)
    SELECT i, 'u' || i, 'User ' || i FROM generate_series(1, :users) i;

CREATE SCHEMA matrix_silo;
CREATE VIEW matrix_silo.users AS
    SELECT id::text AS user_id, handle AS localpart, display_name,
           avatar_url, deactivated
      FROM silo.users;
CREATE VIEW matrix_silo.rooms AS
    SELECT id::text AS room_id, slug AS alias, name, topic,
           true AS is_public, created_at, NULL::text AS avatar_url,
           member_count
      FROM silo.rooms;
CREATE VIEW matrix_silo.room_members AS
    SELECT room_id::text AS room_id, user_id::text AS user_id, role,
           joined_at
      FROM silo.memberships;
CREATE VIEW matrix_silo.messages AS
    SELECT id::text AS message_id, room_id::text AS room_id,
           user_id::text AS user_id,
           CASE WHEN deleted_at IS NULL THEN source ELSE '' END AS body,
           CASE WHEN deleted_at IS NULL THEN html END AS html,
           created_at, edited_at, deleted_at,
           reply_to::text AS reply_to, thread_root::text AS thread_root,
           matrix_event_id
      FROM silo.messages;

-- the contract's lookups, on the views' expressions
CREATE INDEX ON silo.users ((id::text));
CREATE INDEX ON silo.rooms ((id::text));
CREATE INDEX ON silo.memberships ((room_id::text), (user_id::text));
CREATE INDEX ON silo.messages ((id::text));
CREATE INDEX ON silo.messages ((room_id::text), created_at);
SQL
}

bench_silo_room() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 -v room=$3 -v members=$4 \
        -v messages=$5 -v authors=$6 -h $1 -U postgres -d $2 \
        >/dev/null <<'SQL'
INSERT INTO silo.rooms (id, slug, name, topic, created_at, member_count)
    VALUES (:room, 'r' || :room, 'Room ' || :room, 'A bench room',
            now() - interval '1 year', :members);
-- one admin in 25,000 members and one moderator in 10,000 (at least one
-- of each), the rest members
INSERT INTO silo.memberships (room_id, user_id, role, joined_at)
    SELECT :room, i,
           CASE WHEN i % 25000 = 1 THEN 'admin'
                WHEN i % 10000 = 2 THEN 'moderator'
                ELSE 'member' END,
           now() - interval '1 year'
      FROM generate_series(1, :members) i;
INSERT INTO silo.messages (id, room_id, user_id, source, html, created_at,
                           reply_to)
    SELECT :room * 10000000 + i, :room, 1 + i % :authors,
           'Message ' || i || ' of room ' || :room
               || ': some words, as a chat line has them.',
           CASE WHEN i % 10 = 0 THEN '<p>Message <b>' || i || '</b></p>' END,
           now() - interval '1 year' + i * interval '1 second',
           CASE WHEN i % 20 = 0 THEN :room * 10000000 + i - 1 END
      FROM generate_series(1, :messages) i;
ANALYZE silo.users; ANALYZE silo.rooms; ANALYZE silo.memberships;
ANALYZE silo.messages;
INSERT INTO matrix.matrix_rooms (room_id, silo_room_id, room_version)
    VALUES ('!r' || :room || ':bench.test', :room, '10');
SQL
}
