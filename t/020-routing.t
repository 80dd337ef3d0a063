# The routing table: known routes, unknown routes, methods, CORS, and the
# federation and well-known discovery endpoints.

use Test::Nginx::Socket 'no_plan';
use MatrixTest;

no_shuffle();
no_root_location();
run_tests();

__DATA__

=== TEST 1: federation version
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/version
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body chomp
{"server":{"name":"ngx_http_matrix_module","version":"0.1.0"}}



=== TEST 2: an unknown route is M_UNRECOGNIZED with 404
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/nonsense
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}
--- no_error_log
[error]



=== TEST 3: a prefix of a known route is not a route
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1
--- error_code: 404
--- response_body chomp
{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}



=== TEST 4: a trailing slash is another path
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/version/
--- error_code: 404
--- response_body_like: "errcode":"M_UNRECOGNIZED"



=== TEST 5: a known route with a wrong method is 405 with Allow
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
POST /_matrix/federation/v1/version
{"some":"body"}
--- error_code: 405
--- response_headers
Allow: GET, HEAD, OPTIONS
Content-Type: application/json
--- response_body chomp
{"errcode":"M_UNRECOGNIZED","error":"Method not allowed"}



=== TEST 6: DELETE on the key server is 405 too
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
DELETE /_matrix/key/v2/server
--- error_code: 405
--- response_body chomp
{"errcode":"M_UNRECOGNIZED","error":"Method not allowed"}



=== TEST 7: OPTIONS is a CORS preflight: 204, CORS headers, no body
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
OPTIONS /_matrix/key/v2/server
--- more_headers
Origin: https://app.element.io
Access-Control-Request-Method: GET
--- error_code: 204
--- response_headers
Access-Control-Allow-Origin: *
Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS
Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization
Allow: GET, HEAD, OPTIONS
--- response_body chomp



=== TEST 8: query strings do not change the route
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/version?foo=bar&x=/_matrix/key/v2/server
--- error_code: 200
--- response_body_like: ngx_http_matrix_module



=== TEST 9: an encoded slash stays inside its segment
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server/ed25519%2F1
--- error_code: 200
--- response_body_like: "server_name":"example.org"



=== TEST 10: too many segments is an unknown route, not a crash
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request eval
"GET /_matrix" . ("/a" x 200) . "\n"
--- error_code: 404
--- response_body_like: M_UNRECOGNIZED



=== TEST 11: other locations of the server are untouched
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
location / { return 200 "silo\n"; }
--- request
GET /rooms/general
--- error_code: 200
--- response_body
silo



=== TEST 12: well-known server delegation
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_well_known_server matrix.example.org:443;
--- config
location /.well-known/matrix/ { matrix; }
--- request
GET /.well-known/matrix/server
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body chomp
{"m.server":"matrix.example.org:443"}



=== TEST 13: well-known client, with CORS for browsers
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_well_known_client https://chat.example.org;
--- config
location /.well-known/matrix/ { matrix; }
--- request
GET /.well-known/matrix/client
--- error_code: 200
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: *
Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS
Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization
--- response_body chomp
{"m.homeserver":{"base_url":"https://chat.example.org"}}



=== TEST 14: no delegation configured: 404 M_NOT_FOUND
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /.well-known/matrix/ { matrix; }
--- request
GET /.well-known/matrix/server
--- error_code: 404
--- response_body chomp
{"errcode":"M_NOT_FOUND","error":"No federation delegation is configured"}



=== TEST 15: no client discovery configured: 404 M_NOT_FOUND
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /.well-known/matrix/ { matrix; }
--- request
GET /.well-known/matrix/client
--- error_code: 404
--- response_body chomp
{"errcode":"M_NOT_FOUND","error":"No client discovery is configured"}



=== TEST 16: routes are matched on the path, whatever the location
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_well_known_server matrix.example.org:443;
--- config
location / { matrix; }
--- request
GET /.well-known/matrix/server
--- error_code: 200
--- response_body chomp
{"m.server":"matrix.example.org:443"}



=== TEST 17: a body over client_max_body_size: nginx's 413, as Matrix JSON
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
client_max_body_size 1k;
location /_matrix/ { matrix; }
--- request eval
"POST /_matrix/federation/v1/version\n" . ("x" x 4096)
--- error_code: 413
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: *
--- response_body chomp
{"errcode":"M_TOO_LARGE","error":"Request body is too large"}



=== TEST 18: limit_req's 429 is M_LIMIT_EXCEEDED
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
limit_req_zone $server_name zone=federation:1m rate=1r/m;
--- config
location /_matrix/ {
    limit_req zone=federation;
    limit_req_status 429;
    matrix;
}
--- request eval
["GET /_matrix/federation/v1/version", "GET /_matrix/federation/v1/version"]
--- error_code eval
[200, 429]
--- response_body eval
['{"server":{"name":"ngx_http_matrix_module","version":"0.1.0"}}',
 '{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests"}']



=== TEST 19: access rules' 403 is M_FORBIDDEN
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ {
    deny all;
    matrix;
}
--- request
GET /_matrix/federation/v1/version
--- error_code: 403
--- response_headers
Content-Type: application/json
--- response_body chomp
{"errcode":"M_FORBIDDEN","error":"Forbidden"}



=== TEST 20: nginx's error pages elsewhere stay as they are
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
location /silo/ { deny all; }
--- request
GET /silo/x
--- error_code: 403
--- response_headers
Content-Type: text/html
--- response_body_like: <title>403 Forbidden</title>



=== TEST 21: dot segments cannot route around a location's access rules
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/key/v2/server { deny all; matrix; }
location /_matrix/ { matrix; }
--- request eval
["GET /_matrix/key/v2/server", "GET /_matrix/key/v2/server/..",
 "GET /_matrix/key/v2/server/%2e%2e", "GET /_matrix//key/v2/server"]
--- error_code eval
[403, 404, 404, 403]
--- response_body eval
['{"errcode":"M_FORBIDDEN","error":"Forbidden"}',
 '{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}',
 '{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}',
 '{"errcode":"M_FORBIDDEN","error":"Forbidden"}']



=== TEST 22: nginx's errors inside limit_except are Matrix errors too
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ {
    matrix;
    limit_except GET { deny all; }
}
--- request
POST /_matrix/federation/v1/version
--- error_code: 403
--- response_body chomp
{"errcode":"M_FORBIDDEN","error":"Forbidden"}



=== TEST 23: a conditional request gets the resource, not a 412
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/version
--- more_headers
If-Match: "x"
--- error_code: 200
