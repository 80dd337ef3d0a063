# A suite whose expectations are wrong on purpose: t/000-runner-selftest.t
# runs it and checks that each wrong one fails (and that nothing hangs).
# Not a .t file, so that "prove -r t/" leaves it alone.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: wrong status
--- config
location /t { return 200 "x"; }
--- request
GET /t
--- error_code: 404



=== TEST 2: wrong body
--- config
location /t { return 200 "hello\nworld\n"; }
--- request
GET /t
--- response_body
hello
there



=== TEST 3: wrong headers
--- config
location /t { add_header X-A b; return 200 "x"; }
--- request
GET /t
--- response_headers
X-A: c
!X-A
--- response_headers_like
Server: apache.*



=== TEST 4: missing error_log line
--- config
location /t { return 200 "x"; }
--- request
GET /t
--- error_log
no such line in any log



=== TEST 5: unwanted error_log line
--- config
location /t { return 200 "x"; }
--- request
GET /nope.html
--- error_code: 404
--- no_error_log
[error]



=== TEST 6: must_die with a valid config
--- config
location /t { return 200 "x"; }
--- must_die



=== TEST 7: a config error in a normal block
--- config
location /t { no_such_directive; }
--- request
GET /t



=== TEST 8: a request that never completes
--- config
location /t { return 200 "x"; }
--- raw_request eval
"GET /t HTTP/1.1\r\nHost: localhost\r\n"
--- timeout: 1



=== TEST 9: response_body_like mismatch
--- config
location /t { return 200 "hello"; }
--- request
GET /t
--- response_body_like: ^world$
--- response_body_unlike: hel+o



=== TEST 10: must_die, but not with that message
--- config
location /t { no_such_directive; }
--- must_die
--- error_log eval
qr/unknown directive "other_directive"/



=== TEST 11: a block that passes
--- config
location /t { return 200 "fine\n"; }
--- request
GET /t
--- response_body
fine



=== TEST 12: an eval section that dies
--- config
location /t { return 200 "fine\n"; }
--- request
GET /t
--- response_body eval
die "deliberately\n" . no_such_function()



=== TEST 13: a response whose body is too slow
--- user_files eval
[["slow.txt", "x" x 2000]]
--- config
location /slow.txt { limit_rate_after 1000; limit_rate 10; }
--- request
GET /slow.txt
--- timeout: 0.5
