#!/bin/sh
# bench/keyserver: requests/s of GET /_matrix/key/v2/server next to a
# "return 200" location that serves the same bytes with the same headers,
# measured in the same nginx in the same run.  Target: ratio >= 0.9.
#
# One nginx worker and one wrk thread share the machine's two cores, each
# pinned to its own (taskset) so neither steals from the other; the two
# locations are measured alternately, ROUNDS times each, and the best
# round of each is compared (the least disturbed by the rest of the host).

set -e
cd "$(dirname "$0")/../.."

. bench/lib.sh

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18448}

run=$(mktemp -d /tmp/matrix-bench-keyserver-XXXXXX)
trap 'kill $(cat $run/nginx.pid 2>/dev/null) 2>/dev/null || true; rm -rf $run' EXIT

mkdir -p $run/logs
build/matrix-tool keygen $run/signing.key >/dev/null

write_conf() {
    { bench_nginx_head $run $(pwd)/build/ngx_http_matrix_module.so; cat <<CONF

    matrix_server_name bench.example.org;
    matrix_signing_key $run/signing.key;

    server {
        listen 127.0.0.1:$PORT;
        location /_matrix/ { matrix; }
        location = /baseline {
            default_type application/json;
            add_header Access-Control-Allow-Origin "*";
            add_header Access-Control-Allow-Methods "GET, POST, PUT, DELETE, OPTIONS";
            add_header Access-Control-Allow-Headers "X-Requested-With, Content-Type, Authorization";
            return 200 '$1';
        }
    }
}
CONF
    } > $run/nginx.conf
}

# first start: learn the document's bytes, then serve them as the baseline
write_conf '{}'
/usr/sbin/nginx -p $run -c $run/nginx.conf
sleep 0.3
doc=$(curl -sf http://127.0.0.1:$PORT/_matrix/key/v2/server)
kill $(cat $run/nginx.pid); sleep 0.5
write_conf "$doc"
taskset -c 0 /usr/sbin/nginx -p $run -c $run/nginx.conf
sleep 0.3

a=$(curl -s -D - http://127.0.0.1:$PORT/_matrix/key/v2/server | wc -c)
b=$(curl -s -D - http://127.0.0.1:$PORT/baseline | wc -c)
echo "response sizes with headers: matrix $a bytes, baseline $b bytes"

rate() {
    taskset -c 1 wrk -t1 -c$CONNECTIONS -d${DURATION}s "http://127.0.0.1:$PORT$1" \
        | awk '/^Requests\/sec:/ { print int($2) }'
}

best_m=0; best_b=0
i=0
while [ $i -lt $ROUNDS ]; do
    m=$(rate /_matrix/key/v2/server)
    b=$(rate /baseline)
    echo "round $((i + 1)): matrix $m req/s, baseline $b req/s"
    [ "$m" -gt "$best_m" ] && best_m=$m
    [ "$b" -gt "$best_b" ] && best_b=$b
    i=$((i + 1))
done

ratio=$(awk -v m=$best_m -v b=$best_b 'BEGIN { printf "%.3f", m / b }')
echo "keyserver: GET /_matrix/key/v2/server $best_m req/s; baseline (return 200, same bytes) $best_b req/s; ratio $ratio (target >= 0.9)"
