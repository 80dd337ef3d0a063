# GET /_matrix/key/v2/server: this server's signed key document.

use Test::Nginx::Socket 'no_plan';
use MatrixTest;
use Time::HiRes ();

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the key document names the server and its key
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server
--- error_code: 200
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: *
--- response_body_like: ^\{"old_verify_keys":\{\},"server_name":"example.org","signatures":\{"example.org":\{"ed25519:1":"[A-Za-z0-9+/]{86}"\}\},"valid_until_ts":\d{13},"verify_keys":\{"ed25519:1":\{"key":"XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"\}\}\}$
--- no_error_log
[error]
[warn]



=== TEST 2: python3-signedjson verifies the document, which is canonical
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server
--- response_body_filters eval
sub { MatrixTest::pipe_through("/usr/bin/python3 $ENV{TEST_NGINX_MATRIX_CHECK_KEY_DOC} example.org", $_[0]) }
--- response_body
canonical
server_name example.org
verified ed25519:1
valid for more than an hour



=== TEST 3: every key of the file is published and signs; old keys are listed
--- http_config
matrix_server_name chat.example.org:8448;
matrix_signing_key $TEST_NGINX_MATRIX_TWO_KEYS;
matrix_old_verify_key ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 1532645052628;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server
--- response_body_filters eval
sub { MatrixTest::pipe_through("/usr/bin/python3 $ENV{TEST_NGINX_MATRIX_CHECK_KEY_DOC} chat.example.org:8448", $_[0]) }
--- response_body
canonical
server_name chat.example.org:8448
verified ed25519:1
verified ed25519:second_key
old ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052628
valid for more than an hour



=== TEST 4: matrix_key_validity sets valid_until_ts
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_key_validity 3h;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server
--- response_body_filters eval
sub {
    my ($ts) = $_[0] =~ /"valid_until_ts":(\d+)/ or return "no valid_until_ts";
    my $ahead = $ts - int(Time::HiRes::time() * 1000);
    return ($ahead > 10790_000 && $ahead <= 10800_000) ? "3h ahead" : "$ahead ms ahead";
}
--- response_body chomp
3h ahead



=== TEST 5: the deprecated /{keyId} form answers the same document
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server/ed25519:1
--- error_code: 200
--- response_body_like: "verify_keys":\{"ed25519:1":



=== TEST 6: HEAD gets the headers only
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- request
HEAD /_matrix/key/v2/server
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body chomp



=== TEST 7: a server block overrides the http-level name and key
--- http_config
matrix_server_name outer.example.org;
matrix_signing_key $TEST_NGINX_MATRIX_TWO_KEYS;
--- config
matrix_server_name inner.example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
location /_matrix/ { matrix; }
--- request
GET /_matrix/key/v2/server
--- response_body_filters eval
sub { MatrixTest::pipe_through("/usr/bin/python3 $ENV{TEST_NGINX_MATRIX_CHECK_KEY_DOC} inner.example.org", $_[0]) }
--- response_body
canonical
server_name inner.example.org
verified ed25519:1
valid for more than an hour
