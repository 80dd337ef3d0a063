#!/bin/sh
# The demo: a local nginx with the module loaded, answering as the Matrix
# server "localhost:8448", and its key document checked by an independent
# implementation (python3-signedjson).  Run through "./dev demo".
#
# Stop it with:  kill $(cat examples/demo-run/nginx.pid)

set -e
cd "$(dirname "$0")/.."

run=examples/demo-run
mkdir -p $run/logs $run/tmp

if [ -f $run/nginx.pid ] && kill -0 "$(cat $run/nginx.pid)" 2>/dev/null; then
    kill "$(cat $run/nginx.pid)"
    sleep 0.5
fi

if [ ! -f $run/signing.key ]; then
    build/matrix-tool keygen $run/signing.key
fi

if [ ! -f $run/tls.crt ]; then
    openssl req -x509 -newkey ed25519 -nodes -days 30 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout $run/tls.key -out $run/tls.crt 2>/dev/null
fi

sed -e "s|@RUN@|$(pwd)/$run|g" -e "s|@MODULE@|$(pwd)/build/ngx_http_matrix_module.so|g" \
    examples/demo.conf > $run/nginx.conf

/usr/sbin/nginx -p "$(pwd)/$run" -c "$(pwd)/$run/nginx.conf" -t -q
/usr/sbin/nginx -p "$(pwd)/$run" -c "$(pwd)/$run/nginx.conf"
sleep 0.3

echo
echo "== nginx is running with ngx_http_matrix_module (pid $(cat $run/nginx.pid))"
echo "   Matrix server name: localhost:8448   (TLS on 8448, plain HTTP on 8008)"
echo
echo "== GET https://localhost:8448/_matrix/key/v2/server"
curl -sk https://localhost:8448/_matrix/key/v2/server | tee $run/key.json | python3 -m json.tool
echo
echo "== checked by python3-signedjson (independent of this module):"
/usr/bin/python3 t/tools/check_key_doc.py localhost:8448 < $run/key.json | sed 's/^/   /'
echo
echo "== GET /_matrix/federation/v1/version"
curl -sk https://localhost:8448/_matrix/federation/v1/version; echo
echo "== GET /.well-known/matrix/server"
curl -s http://localhost:8008/.well-known/matrix/server; echo
echo "== GET /_matrix/nothing/here"
curl -s http://localhost:8008/_matrix/nothing/here; echo
echo
echo "Try it:   curl -k https://localhost:8448/_matrix/key/v2/server"
echo "Stop it:  kill \$(cat $run/nginx.pid)"
