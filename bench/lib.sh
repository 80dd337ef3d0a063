# Shared by the benchmarks (sourced with ". bench/lib.sh" from the top of
# the checkout): a throwaway Postgres cluster as t/lib/MatrixPg.pm makes
# it, and the part of nginx.conf every benchmark's nginx has.
#
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
bench_nginx_prepare() {
    mkdir -p $1/logs
    cp build/ngx_http_matrix_module.so $1/
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
