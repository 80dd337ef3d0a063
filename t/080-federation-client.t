# The federation HTTP client against a fake remote homeserver over real
# TLS, with names from a DNS server the test controls: certificate and
# name checks, SNI, the SSRF guard, Content-Length and chunked bodies,
# size and time limits, kept connections, lookups that fail.
#
# The test-only module t/pgtest drives the client (location /fetch).

use strict;
use warnings;

use Test::More;
use URI::Escape qw(uri_escape);
use JSON::PP;

use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;

plan skip_all => 'MATRIX_PGTEST_MODULE not built'
    unless $ENV{MATRIX_PGTEST_MODULE} && -f $ENV{MATRIX_PGTEST_MODULE};
plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();

$ENV{TEST_NGINX_LOAD_MODULES} .= " $ENV{MATRIX_PGTEST_MODULE}";

my $fake = MatrixFakeHS->start(names => ['remote.test', 'other.test']);
my $dns = MatrixDNS->start(records => {
    'remote.test' => { A => '127.0.0.1' },
    'other.test'  => { A => '127.0.0.1' },
    'v6.test'     => { AAAA => '::1' },
    'private.test' => { A => '10.1.2.3' },
    'mixed.test'  => { A => ['10.9.9.9', '127.0.0.1'] },
});

sub nginx {
    my (%o) = @_;
    return MatrixNginx->start(http => <<"EOF",
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_federation_resolver @{[ $dns->resolver ]} ipv6=off;
    matrix_federation_trusted_certificate @{[ $o{ca} // $fake->ca_file ]};
    @{[ $o{http} // "matrix_federation_allow_ip 127.0.0.0/8;" ]}
EOF
        server => '        location /fetch { matrix_httptest; }');
}

sub fetch {
    my ($ngx, %a) = @_;
    $a{port} //= $fake->port;
    my $url = '/fetch?' . join '&', map { "$_=" . uri_escape($a{$_}) }
                                    sort keys %a;
    my ($status, undef, $body, $t) = $ngx->get($url);
    die "fetch: $status" unless $status == 200;
    my ($head, $resp) = split /\n\n/, $body, 2;
    my %h = map { /^([^:]+): ?(.*)$/ ? ($1 => $2) : () } split /\n/, $head;
    $h{body} = $resp;
    $h{time} = $t;
    return \%h;
}

my $ngx = nginx();

# --- the normal case ----------------------------------------------------------

my $r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'a key document over TLS from a name looked up in DNS';
is $r->{'content-type'}, 'application/json', 'with its content type';
my $doc = eval { decode_json($r->{body}) } || {};
is $doc->{server_name}, 'remote.test', 'the server that answered is the one '
    . 'named (SNI and Host)';

$r = fetch($ngx, host => 'other.test', uri => '/_matrix/key/v2/server');
is eval { decode_json($r->{body})->{server_name} }, 'other.test',
    'another name on the same address and port: its own answer';

my $before = $dns->query_count('remote.test', 'A');
fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server') for 1 .. 3;
cmp_ok $dns->query_count('remote.test', 'A') - $before, '<=', 1,
    'the resolver caches the name';

my @conns = map { $_->{connection} // () } $fake->requests(endpoint => 'key');
SKIP: {
    skip 'the fake does not report connections', 1 unless @conns;
    my %seen = map { $_ => 1 } @conns;
    cmp_ok scalar(keys %seen), '<', scalar(@conns),
        'kept connections are used again';
}

$r = fetch($ngx, host => '127.0.0.1', tls_name => 'remote.test',
           uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'an address literal with a TLS name';

# --- TLS refusals ----------------------------------------------------------------

$r = fetch($ngx, host => '127.0.0.1', tls_name => 'wrong.test',
           uri => '/_matrix/key/v2/server');
is $r->{status}, 0, 'a certificate for another name';
like $r->{error}, qr/not for "wrong\.test"/, 'is refused, saying so';

$r = fetch($ngx, host => '127.0.0.1', host_header => 'remote.test',
           uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'an address literal the certificate names (as an IP)';

$r = fetch($ngx, host => '127.0.0.1', tls_name => '127.0.0.9',
           uri => '/_matrix/key/v2/server');
is $r->{status}, 0, 'an address the certificate does not name';
like $r->{error}, qr/not for "127\.0\.0\.9"/, 'is refused';

{
    my $other = nginx(ca => '/etc/ssl/certs/ca-certificates.crt');
    $r = fetch($other, host => 'remote.test', uri => '/_matrix/key/v2/server');
    is $r->{status}, 0, 'a certificate from a CA not trusted';
    like $r->{error}, qr/is not trusted/, 'is refused, saying so';
    $other->stop;
}

# --- bodies ---------------------------------------------------------------------------

$fake->configure('remote.test', {behaviour => {key => {chunked => JSON::PP::true, chunk_size => 7}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'a chunked body';
is eval { decode_json($r->{body})->{server_name} }, 'remote.test',
    'is put together whole';

$fake->configure('remote.test', {behaviour => {key => {oversize => 200000}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server',
           max => 65536);
is $r->{status}, 0, 'a body over the limit';
like $r->{error}, qr/too large|larger than 65536/, 'is refused';

$fake->configure('remote.test', {behaviour => {key => {oversize => 200000, chunked => JSON::PP::true}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server',
           max => 65536);
like $r->{error}, qr/larger than 65536/, 'also when chunked';

$fake->configure('remote.test', {behaviour => {key => {close_after => 10}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server');
is $r->{status}, 0, 'a body cut short';
like $r->{error}, qr/closed early/, 'is an error, not a short answer';

$fake->configure('remote.test', {behaviour => {key => {delay_ms => 3000}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server',
           timeout => 400);
is $r->{status}, 0, 'a server slower than the timeout';
like $r->{error}, qr/timed out/, 'times out';
cmp_ok $r->{time}, '<', 1.5, 'in time';

$fake->configure('remote.test', {behaviour => {key => {status => 404}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server');
is $r->{status}, 404, 'an error status is an answer';

$fake->configure('remote.test', {behaviour => {key => {}}});
$r = fetch($ngx, host => 'remote.test', uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'and the next request is fine';

# --- lookups and connects that fail ------------------------------------------------------

$r = fetch($ngx, host => 'nowhere.test', uri => '/');
is $r->{status}, 0, 'a name that does not exist';
like $r->{error}, qr/cannot resolve "nowhere\.test": Host not found/,
    'says so';

$r = fetch($ngx, host => '127.0.0.1', port => 1, tls => 0, uri => '/');
like $r->{error}, qr/cannot connect to 127\.0\.0\.1:1/, 'a refused connection';

# --- the SSRF guard ---------------------------------------------------------------------

$r = fetch($ngx, host => 'private.test', uri => '/');
is $r->{status}, 0, 'a name resolving to a private address';
like $r->{error}, qr/10\.0\.0\.0\/8 private-use address, which is not allowed/,
    'is not connected to';

$r = fetch($ngx, host => 'mixed.test', tls_name => 'remote.test',
           uri => '/_matrix/key/v2/server');
is $r->{status}, 200, 'of several addresses, the allowed ones are used';

{
    my $strict = nginx(http => '');

    $r = fetch($strict, host => 'remote.test', uri => '/_matrix/key/v2/server');
    is $r->{status}, 0, 'without matrix_federation_allow_ip, loopback';
    like $r->{error}, qr/127\.0\.0\.0\/8 loopback/, 'is refused';

    for my $literal ('127.0.0.1', '::1', '::ffff:127.0.0.1', '169.254.169.254',
                     '0.0.0.0', '64:ff9b::7f00:1', 'fe80::1', '192.168.1.1')
    {
        $r = fetch($strict, host => $literal, tls => 0, uri => '/');
        is $r->{status}, 0, "$literal is refused";
        like $r->{error}, qr/not allowed/, '... by the guard';
    }

    $strict->stop;
    like $strict->error_log, qr/\[warn\] .*not connecting to 127\.0\.0\.1/,
        'refusals are logged';
}

# --- signed requests ---------------------------------------------------------------------

{
    my ($kid, $b64) = ('ed25519:1', $MatrixTest::SPEC_PUBLIC_KEY);
    $fake->configure_global({ keys => { 'example.org' => { $kid => $b64 } } });
    $fake->reset;

    $r = fetch($ngx, host => 'remote.test', destination => 'remote.test',
               uri => '/_matrix/federation/v1/query/directory?room_alias=%23a%3Aremote.test');
    my ($req) = $fake->requests(endpoint => 'federation');
    ok $req && $req->{verified}, 'a GET the fake verifies as X-Matrix from '
        . 'example.org' or diag explain $req;
    is $req && $req->{origin}, 'example.org', 'with the origin';

    $fake->reset;
    $r = fetch($ngx, host => 'remote.test', destination => 'remote.test',
               method => 'PUT', uri => '/_matrix/federation/v1/send/t1',
               body => '{"origin":"example.org","origin_server_ts":1,"pdus":[]}');
    ($req) = $fake->requests(endpoint => 'federation');
    ok $req && $req->{verified}, 'a PUT with its JSON body, verified';

    $r = fetch($ngx, host => 'remote.test', destination => 'remote.test',
               method => 'PUT', uri => '/_matrix/federation/v1/send/t2',
               body => '{"not json');
    like $r->{error}, qr/not JSON to sign/, 'a body that is not JSON is not sent';
}

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;
