# What "nginx -t" refuses, and how it says so.

use Test::Nginx::Socket 'no_plan';
use MatrixTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a missing key file
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_NO_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_signing_key: cannot open ".*does-not-exist\.key" .*No such file or directory/



=== TEST 2: a key file with a short seed names the line
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_BAD_SEED;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_signing_key: ".*bad-seed\.key": line 2: .*seed/



=== TEST 3: a key file with an unknown algorithm
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_BAD_ALG;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_signing_key: ".*bad-alg\.key": line 1: .*rsa/



=== TEST 4: a key file with no key
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_EMPTY_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_signing_key: ".*empty\.key": /



=== TEST 5: a key file that is a directory
--- http_config
matrix_server_name example.org;
matrix_signing_key /tmp;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_signing_key: "\/tmp" is not a file/



=== TEST 6: "matrix" without a server name
--- http_config
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix" in \S+nginx\.conf:\d+ needs "matrix_server_name" in its server or http block/



=== TEST 7: "matrix" without a key
--- http_config
matrix_server_name example.org;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix" in \S+nginx\.conf:\d+ needs "matrix_signing_key" in its server or http block/



=== TEST 8: a key file readable by others starts with a warning
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_OPEN_KEY;
--- config
location /_matrix/ { matrix; }
--- request
GET /_matrix/federation/v1/version
--- error_code: 200
--- error_log eval
qr/\[warn\] .*matrix_signing_key: ".*open\.key" is accessible by other users/



=== TEST 9: an invalid server name
--- http_config
matrix_server_name "example.org:port";
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_server_name: invalid server name "example\.org:port": port must be 1 to 5 digits/



=== TEST 10: a server name with a character outside the grammar
--- http_config
matrix_server_name "exa_mple.org";
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_server_name: invalid server name "exa_mple\.org": invalid character in hostname/



=== TEST 11: an old key that is not a key
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_old_verify_key ed25519:old c2hvcnQ 1532645052628;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_old_verify_key: "c2hvcnQ" is not a base64 ed25519 public key/



=== TEST 12: an old key with a bad key id
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_old_verify_key rsa:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052628;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_old_verify_key: invalid key id "rsa:old"/



=== TEST 13: an old key that is also a current key
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_old_verify_key ed25519:1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052628;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_old_verify_key: "ed25519:1" is also a current key/



=== TEST 14: an old key with a bad expiry
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_old_verify_key ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 yesterday;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_old_verify_key: invalid expiry "yesterday"/



=== TEST 15: a key validity under two hours
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_key_validity 90m;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix_key_validity" directive must be at least 2h in \S+nginx.conf:\d+/



=== TEST 16: a well-known server that is not a server name
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_well_known_server "https://matrix.example.org";
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_well_known_server: invalid delegated server "https:\/\/matrix\.example\.org"/



=== TEST 17: a well-known client that is not a URL
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_well_known_client chat.example.org;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_well_known_client: invalid base URL "chat\.example\.org"/



=== TEST 18: "matrix" twice in one location
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix" directive is duplicate/



=== TEST 19: a key file given twice in one block
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix_signing_key" directive is duplicate/



=== TEST 20: a key validity over a year
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_key_validity 100000000y;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] "matrix_key_validity" directive must be at most 365d/



=== TEST 21: the same old key id twice
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_old_verify_key ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052628;
matrix_old_verify_key ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052629;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_old_verify_key: "ed25519:old" is given twice/



=== TEST 22: matrix_postgres: a connection string libpq cannot parse
--- http_config
matrix_postgres "host=/tmp dbname";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: invalid connection string: missing "=" after "dbname"/



=== TEST 23: matrix_postgres: an unknown connection option
--- http_config
matrix_postgres "host=/tmp dbnmae=x";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: invalid connection string: invalid connection option "dbnmae"/



=== TEST 24: matrix_postgres: max out of range
--- http_config
matrix_postgres "host=/tmp" max=0;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: invalid "max=0", expected max=1\.\.1000/



=== TEST 25: matrix_postgres: a bad timeout
--- http_config
matrix_postgres "host=/tmp" timeout=soon;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: invalid "timeout=soon"/



=== TEST 26: matrix_postgres: an unknown parameter
--- http_config
matrix_postgres "host=/tmp" maxconns=3;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: invalid parameter "maxconns=3"/



=== TEST 27: matrix_postgres: a host name that does not resolve fails at configuration time
--- http_config
matrix_postgres "host=no-such-host.invalid dbname=x";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: host "no-such-host\.invalid" not found/



=== TEST 28: matrix_postgres: several hosts without hostaddr
--- http_config
matrix_postgres "host=a.example,b.example dbname=x";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*several hosts "a\.example,b\.example" need "hostaddr"/



=== TEST 29: matrix_postgres: twice
--- http_config
matrix_postgres "host=/tmp";
matrix_postgres "host=/tmp";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*"matrix_postgres" directive is duplicate/



=== TEST 30: matrix_schema: a name Postgres cannot hold
--- http_config
matrix_schema aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*"matrix_schema" directive needs a schema name of 1 to 63 bytes/



=== TEST 31: matrix_silo_api: not an http URL
--- http_config
matrix_silo_api https://silo.example/matrix/;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_silo_api: invalid URL "https:\/\/silo\.example\/matrix\/", expected "http:\/\/host/



=== TEST 32: matrix_silo_api: a token file that is not there
--- http_config
matrix_silo_api http://127.0.0.1:8090/matrix/ token_file=/nonexistent/token;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_silo_api: cannot open token file "\/nonexistent\/token"/



=== TEST 33: the Postgres directives are accepted as documented
--- http_config
matrix_postgres "host=/nonexistent dbname=x user=x" max=3 timeout=250ms;
matrix_schema "Matrix Data";
matrix_silo_schema silo_views;
matrix_migrate off;
matrix_silo_api http://127.0.0.1:8090/matrix/;
--- config
location /t { return 204; }
--- request
GET /t
--- error_code: 204



=== TEST 34: matrix_postgres: service= would look things up while serving
--- http_config
matrix_postgres "service=chat";
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_postgres: "service=chat" is not supported, write its parameters out/



=== TEST 35: matrix_postgres: an IPv6 host literal is an address, not a name
--- http_config
matrix_postgres "host=::1 port=1 dbname=x user=x" timeout=100ms;
--- config
location /t { return 204; }
--- request
GET /t
--- error_code: 204



=== TEST 36: matrix_federation_trusted_key_server: a bad server name
--- http_config
matrix_federation_trusted_key_server "notary test" ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid server name "notary test"/



=== TEST 37: matrix_federation_trusted_key_server: a key ID of another algorithm
--- http_config
matrix_federation_trusted_key_server notary.test rsa:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid key ID "rsa:a" for "notary\.test"/



=== TEST 38: matrix_federation_trusted_key_server: a key ID with a bad version
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a-b=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid key ID "ed25519:a-b" for "notary\.test"/



=== TEST 39: matrix_federation_trusted_key_server: padded base64
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ=;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid key "l8Hft5qXKn1vfHrg3p4\+W8gELQVo8N13JkluMfmn2sQ=" for "notary\.test": not 32 bytes of unpadded base64/



=== TEST 40: matrix_federation_trusted_key_server: a key of 3 bytes
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a=AAAA;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid key "AAAA" for "notary\.test": not 32 bytes/



=== TEST 41: matrix_federation_trusted_key_server: a key ID without its key
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: invalid key "ed25519:a" for "notary\.test", expected "ed25519:VERSION=BASE64KEY"/



=== TEST 42: matrix_federation_trusted_key_server: no key to check the notary by
--- http_config
matrix_federation_trusted_key_server notary.test;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid number of arguments in "matrix_federation_trusted_key_server"/



=== TEST 43: matrix_federation_trusted_key_server: a notary named twice
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
matrix_federation_trusted_key_server notary.test ed25519:b=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: "notary\.test" is duplicate/



=== TEST 44: matrix_federation_trusted_key_server: a key ID given twice
--- http_config
matrix_federation_trusted_key_server notary.test ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_federation_trusted_key_server: key ID "ed25519:a" of "notary\.test" is duplicate/



=== TEST 45: matrix_federation_trusted_key_server: not in a server block
--- http_config
--- config
matrix_federation_trusted_key_server notary.test ed25519:a=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*"matrix_federation_trusted_key_server" directive is not allowed here/



=== TEST 46: matrix_federation_trusted_key_server: good ones, two keys for one
--- http_config
matrix_federation_trusted_key_server matrix.org ed25519:auto=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
matrix_federation_trusted_key_server notary.test:8448 ed25519:a_1=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ ed25519:b=l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ;
--- config
location /t { return 204; }
--- request
GET /t
--- error_code: 204


=== TEST 47: matrix_room_version: unknown
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_room_version 99;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*unknown room version \"99\" in "matrix_room_version" \(rooms this server creates: 6 to 11\)/



=== TEST 48: matrix_room_version: too old
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_room_version 5;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*unsupported room version \"5\" in "matrix_room_version" \(rooms this server creates: 6 to 11\)/



=== TEST 49: matrix_room_version: 12 names rooms by their create event
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_room_version 12;
--- config
location /_matrix/ { matrix; }
--- must_die
--- error_log eval
qr/\[emerg\] .*unsupported room version \"12\" in "matrix_room_version" \(rooms this server creates: 6 to 11\)/



=== TEST 50: matrix_room_version 11 and matrix_room_history 0 are fine
--- http_config
matrix_server_name example.org;
matrix_signing_key $TEST_NGINX_MATRIX_KEY;
matrix_room_version 11;
matrix_room_history 0;
--- config
location /t { return 204; }
--- request
GET /t
--- error_code: 204



=== TEST 51: matrix_silo_supports: an unknown write is named
--- http_config
matrix_silo_api http://127.0.0.1:8090/matrix/;
matrix_silo_supports reactions typing presence;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*matrix_silo_supports: unknown write "presence", expected "reactions", "typing" or "receipts"/



=== TEST 52: matrix_silo_supports: twice
--- http_config
matrix_silo_api http://127.0.0.1:8090/matrix/;
matrix_silo_supports reactions;
matrix_silo_supports typing;
--- config
location /_matrix/ { return 204; }
--- must_die
--- error_log eval
qr/\[emerg\] .*"matrix_silo_supports" directive is duplicate/



=== TEST 53: matrix_silo_supports: the three writes are accepted
--- http_config
matrix_silo_api http://127.0.0.1:8090/matrix/;
matrix_silo_supports reactions typing receipts;
--- config
location /t { return 204; }
--- request
GET /t
--- error_code: 204
