# The test runner itself (t/runner/Test/Nginx/Socket.pm, a local subset of
# Test::Nginx::Socket), against stock nginx: no directive of our module.
#
# The blocks below are plain Test::Nginx blocks (TEST 21 relies on the local
# runner reading what nginx prints while starting).  Under the local runner,
# the file then also runs t/runner/Test/Nginx/selftest/failing-suite.pl, whose
# expectations are wrong on purpose, and checks that each of them fails,
# promptly.
#
#   TEST_NGINX_BINARY=/usr/sbin/nginx prove -I t/runner t/000-runner-selftest.t

use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_SELFTEST_WORD} = 'swordfish';

no_shuffle();
run_tests();

check_that_wrong_expectations_fail() if $Test::Nginx::Socket::IS_LOCAL_SUBSET;

sub check_that_wrong_expectations_fail {
    require IPC::Run;
    require File::Basename;
    require File::Spec;

    my $dir = File::Basename::dirname(File::Spec->rel2abs(__FILE__));
    my $suite = "$dir/runner/Test/Nginx/selftest/failing-suite.pl";

    # the suite picks its own port and server root
    local $ENV{TEST_NGINX_SERVER_PORT};
    local $ENV{TEST_NGINX_PORT};
    local $ENV{TEST_NGINX_SERVROOT};
    local $ENV{TEST_NGINX_HTML_DIR};
    delete @ENV{qw(TEST_NGINX_SERVER_PORT TEST_NGINX_PORT TEST_NGINX_SERVROOT
                   TEST_NGINX_HTML_DIR)};

    my ($out, $err) = ('', '');
    my $started = time;
    my $finished = eval {
        IPC::Run::run([$^X, "-I$dir/runner", $suite], \undef, \$out, \$err,
            IPC::Run::timeout(120));
        1;
    };
    my $status = $?;
    my $took = time - $started;

    ok($finished, 'failing suite: finishes') or diag($@);
    ok($status != 0, 'failing suite: exits non-zero');
    ok($took < 60, "failing suite: takes less than a minute (${took}s)");

    my @expected = (
        [0, 'TEST 1: wrong status - status code ok'],
        [1, 'TEST 2: wrong body - status code ok'],
        [0, 'TEST 2: wrong body - response_body - response is expected'],
        [0, 'TEST 3: wrong headers - header X-A ok'],
        [0, 'TEST 3: wrong headers - header X-A not present'],
        [0, 'TEST 3: wrong headers - header Server like ok'],
        [0, 'TEST 4: missing error_log line - pattern "no such line in any log"'
            . ' should match a line in error.log'],
        [0, 'TEST 5: unwanted error_log line - pattern "[error]"'
            . ' should not match any line in error.log'],
        [0, 'TEST 6: must_die with a valid config'
            . ' - nginx failed to start as expected'],
        [0, 'TEST 7: a config error in a normal block - status code ok'],
        [0, 'TEST 8: a request that never completes - status code ok'],
        [0, 'TEST 9: response_body_like mismatch'
            . ' - response_body_like - response is expected'],
        [0, 'TEST 9: response_body_like mismatch'
            . ' - response_body_unlike - response is expected'],
        [0, 'TEST 10: must_die, but not with that message'
            . ' - pattern (?^:unknown directive "other_directive")'
            . ' should match a line in error.log'],
        [1, 'TEST 10: must_die, but not with that message'
            . ' - nginx failed to start as expected'],
        [1, 'TEST 11: a block that passes - status code ok'],
        [1, 'TEST 11: a block that passes'
            . ' - response_body - response is expected'],
        [0, 'TEST 12: an eval section that dies - runner error'],
        [0, 'TEST 13: a response whose body is too slow - status code ok'],
    );
    my %result;
    for my $line (split /\n/, $out) {
        $result{$2} = $1 ? 0 : 1 if $line =~ /^(not )?ok \d+ - (.*)$/;
    }
    for my $e (@expected) {
        my ($pass, $name) = @$e;
        is($result{$name}, $pass,
            'failing suite: ' . ($pass ? 'passes' : 'fails') . " '$name'")
            or diag("output of the failing suite:\n$out\n$err");
    }
    my $count = () = $out =~ /^not ok /mg;
    is($count, scalar(grep { !$_->[0] } @expected),
        'failing suite: no other check fails') or diag($out);
}

__DATA__

=== TEST 1: return, exact body
--- config
location /t { return 200 "hello\n"; }
--- request
GET /t
--- error_code: 200
--- response_body
hello
--- no_error_log
[error]
[alert]



=== TEST 2: a body without its last newline, chomp
--- config
location /t { return 200 "hello"; }
--- request
GET /t
--- response_body chomp
hello



=== TEST 3: response headers: exact, absent, like
--- config
location /t {
    add_header X-A b;
    add_header X-Empty "";
    return 200 "ok";
}
--- request
GET /t
--- response_headers
X-A: b
content-type: text/plain
Content-Length: 2
!X-B
!X-Empty
--- response_headers_like
Server: nginx(/[\d.]+)?
Content-Type: text/.*



=== TEST 4: a location that does not exist is a 404, and logged
--- config
location /t { return 200 "ok"; }
--- request
GET /nope.html
--- error_code: 404
--- response_body_like: <title>404 Not Found</title>
--- response_body_unlike: 200
--- error_log eval
[
    'open() "',
    qr{\[error\] .*open\(\) ".*/html/nope\.html" failed \(2: No such file or directory\)},
]
--- no_error_log
[alert]
[emerg]



=== TEST 5: a config error: nginx must not start, and says why
--- config
location /t { no_such_directive on; }
--- must_die
--- error_log eval
qr/\[emerg\] unknown directive "no_such_directive" in \S+nginx\.conf:\d+/



=== TEST 6: request eval, query string
--- config
location /t { return 200 "args=$args\n"; }
--- request eval
"GET /t?" . ("k=v&" x 2) . "last=" . (6 * 7)
--- response_body
args=k=v&k=v&last=42



=== TEST 7: response_body eval
--- config
location /t { return 200 "a\tb\r\n"; }
--- request
GET /t
--- response_body eval
"a\tb\r\n"



=== TEST 8: $TEST_NGINX_ variables in every config section
--- main_config
env TEST_NGINX_SELFTEST_WORD;
--- http_config
map $uri $selftest_word { default "$TEST_NGINX_SELFTEST_WORD"; }
--- config
location /t { return 200 "$selftest_word $TEST_NGINX_SELFTEST_WORD $TEST_NGINX_SERVER_PORT\n"; }
--- request
GET /t
--- response_body eval
"swordfish swordfish $ENV{TEST_NGINX_SERVER_PORT}\n"



=== TEST 9: http_config eval
--- http_config eval
"map \$uri \$from_eval { default " . (6 * 7) . "; }"
--- config
location /t { return 200 "$from_eval"; }
--- request
GET /t
--- response_body chomp
42



=== TEST 10: a request body is sent with its length
--- config
location /t { return 200 "length=$content_length method=$request_method\n"; }
--- request
POST /t
hello world
--- response_body
length=11 method=POST



=== TEST 11: a request body over client_max_body_size
--- config
location /t { client_max_body_size 10; return 200 "no\n"; }
--- request eval
"PUT /t\n" . ("x" x 4096)
--- error_code: 413



=== TEST 12: more_headers
--- config
location /t { return 200 "foo=$http_x_foo host=$host ua=$http_user_agent\n"; }
--- request
GET /t
--- more_headers
X-Foo: bar
User-Agent: selftest/1.0
--- response_body
foo=bar host=localhost ua=selftest/1.0



=== TEST 13: user_files, served by the server's defaults
--- user_files
>>> foo.html
<p>hi</p>
>>> sub/dir/bar.txt
bar
--- config
location /t { return 200 "unused"; }
--- request
GET /sub/dir/bar.txt
--- response_body
bar



=== TEST 14: a chunked response is decoded
--- user_files
>>> c.txt
hello world
--- config
location /c.txt { sub_filter_types *; sub_filter world nginx; sub_filter_once off; }
--- request
GET /c.txt
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
hello nginx



=== TEST 15: HTTP/1.0: a body delimited by the end of the connection
--- user_files
>>> c.txt
hello world
--- config
location /c.txt { sub_filter_types *; sub_filter world nginx; }
--- request
GET /c.txt HTTP/1.0
--- response_headers
!Transfer-Encoding
!Content-Length
--- response_body
hello nginx



=== TEST 16: HEAD has no body
--- config
location /t { return 200 "hello\n"; }
--- request
HEAD /t
--- response_headers
Content-Length: 6
--- response_body chomp



=== TEST 17: keep-alive: the response ends at its Content-Length
--- config
location /t { keepalive_timeout 60s; return 200 "hello\n"; }
--- request
GET /t
--- more_headers
Connection: keep-alive
--- timeout: 10
--- response_headers
Connection: keep-alive
--- response_body
hello



=== TEST 18: raw_request
--- config
location /t { return 200 "raw $server_protocol\n"; }
--- raw_request eval
"GET /t HTTP/1.0\r\nHost: localhost\r\n\r\n"
--- response_body
raw HTTP/1.0



=== TEST 19: response_body_filters
--- config
location /t { return 200 "hello\n"; }
--- request
GET /t
--- response_body_filters eval
sub { uc $_[0] }
--- response_body
HELLO



=== TEST 20: log_level per block; no stray connection in the log
--- log_level: info
--- config
location /t { return 200 "quiet\n"; }
--- request
GET /t
--- response_body
quiet
--- error_log
[notice]
--- no_error_log
[debug]
[info]



=== TEST 21: error_log sees a warning nginx prints while starting
--- http_config
server {
    listen 127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name localhost;
    return 200 "first\n";
}
--- config
location /t { return 200 "second\n"; }
--- request
GET /t
--- response_body
first
--- error_log eval
qr/\[warn\] .*conflicting server name "localhost" on 127\.0\.0\.1:\d+, ignored/



=== TEST 22: a redirect
--- config
location /t { return 302 /elsewhere; }
--- request
GET /t
--- error_code: 302
--- response_headers_like
Location: http://localhost(:\d+)?/elsewhere



=== TEST 23: grep_error_log
--- log_level: info
--- config
location /t { return 200 "x"; }
--- request
GET /nope-a.html
--- error_code: 404
--- grep_error_log eval
qr/open\(\) "[^"]*nope-a\.html" failed/
--- grep_error_log_out eval
qr{^open\(\) "/\S+/html/nope-a\.html" failed\n$}



=== TEST 24: shutdown_error_log: what nginx logs once told to stop
--- log_level: notice
--- config
location /t { return 200 "x"; }
--- request
GET /t
--- no_error_log
exiting
--- shutdown_error_log eval
qr/\[notice\] .*exit/
