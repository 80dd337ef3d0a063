# Server discovery (server-server API, "Resolving server names"): every
# numbered step, against a DNS server the test controls and a fake
# homeserver over real TLS that records the Host header and SNI of what
# it is asked; the well-known cache; the SSRF guard on SRV targets and
# delegated names.
#
# The test-only module t/pgtest drives it (location /dest,
# matrix_destinationtest); its two ports stand in for 443 (the
# well-known request) and 8448 (the fallback), which the fake cannot
# listen on.

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
plan skip_all => 'no python3-dnslib' unless MatrixDNS::available();

$ENV{TEST_NGINX_LOAD_MODULES} .= " $ENV{MATRIX_PGTEST_MODULE}";

my @names = qw(remote.test deleg.test deleg-srv.test deleg-legacy.test
               deleg-none.test wk-port.test wk-srv.test wk-legacy.test
               wk-none.test wk-ip.test wk-404.test wk-badjson.test
               wk-badname.test wk-redirect.test wk-loop.test wk-short.test
               wk-private.test srv.test legacy.test plain.test
               srv-private.test);

my $fake = MatrixFakeHS->start(names => \@names);
my $P = $fake->port;

my %records = map { $_ => { A => '127.0.0.1' } } @names, 'srvtarget.test';
%records = (%records,
    'private.test'        => { A => '10.1.2.3' },
    'private-target.test' => { A => '10.1.2.4' },
    '_matrix-fed._tcp.deleg-srv.test'  => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix._tcp.deleg-legacy.test'   => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix-fed._tcp.wk-404.test'     => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix._tcp.wk-badname.test'     => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix-fed._tcp.srv.test'        => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix._tcp.legacy.test'         => { SRV => [[10, 5, $P, 'srvtarget.test']] },
    '_matrix-fed._tcp.srv-private.test' => { SRV => [[10, 5, $P, 'private-target.test']] },
    # both: the IANA-registered one wins
    '_matrix._tcp.srv.test'            => { SRV => [[10, 5, 1, 'srvtarget.test']] },
);
my $dns = MatrixDNS->start(records => \%records);

my %wk = (
    'wk-port.test'    => { 'm.server' => "deleg.test:$P" },
    'wk-srv.test'     => { 'm.server' => 'deleg-srv.test' },
    'wk-legacy.test'  => { 'm.server' => 'deleg-legacy.test' },
    'wk-none.test'    => { 'm.server' => 'deleg-none.test' },
    'wk-ip.test'      => { 'm.server' => "127.0.0.1:$P" },
    'wk-badjson.test' => '{"m.server": ',
    'wk-badname.test' => { 'm.server' => 'bad name!' },
    'wk-short.test'   => { 'm.server' => "deleg.test:$P" },
    'wk-private.test' => { 'm.server' => "private.test:$P" },
);
$fake->configure($_, { well_known => $wk{$_} }) for keys %wk;
$fake->configure('wk-redirect.test', { behaviour => { well_known => {
    redirect => "https://wk-port.test:$P/.well-known/matrix/server" } } });
$fake->configure('wk-loop.test', { behaviour => { well_known => {
    redirect => '/.well-known/matrix/server' } } });
$fake->configure('wk-short.test', { behaviour => { well_known => {
    headers => { 'Cache-Control' => 'public, max-age=1' } } } });

sub nginx {
    my (%o) = @_;
    my $ports = $o{spec_ports} ? '' : "$P $P";
    return MatrixNginx->start(http => <<"EOF",
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_federation_resolver @{[ $dns->resolver ]} ipv6=off;
    matrix_federation_trusted_certificate @{[ $fake->ca_file ]};
    matrix_federation_allow_ip 127.0.0.0/8;
EOF
        server => "        location /dest { matrix_destinationtest $ports; }");
}

sub dest {
    my ($ngx, $name, %a) = @_;
    my $url = '/dest?server_name=' . uri_escape($name)
        . ($a{fetch} ? '&fetch=1' : '');
    my ($status, undef, $body) = $ngx->get($url);
    die "dest: $status" unless $status == 200;
    my %h = map { /^([a-z_]+): ?(.*)$/ ? ($1 => $2) : () } split /\n/, $body;
    return \%h;
}

sub wk_count {
    my @r = $fake->requests(endpoint => 'well_known', @_);
    return scalar @r;
}

# the last key request the fake saw
sub last_key {
    my @r = $fake->requests(endpoint => 'key');
    return $r[-1] || {};
}

sub fetched {
    my ($r, $server, $host, $sni, $what) = @_;
    is $r->{status}, 200, "$what: the keys are fetched"
        or diag "error: $r->{error} fetch_error: $r->{fetch_error}";
    my $doc = eval { decode_json($r->{body}) } || {};
    is $doc->{server_name}, $server, "$what: from the right server";
    my $k = last_key();
    is $k->{host}, $host, "$what: Host $host";
    is $k->{sni}, $sni, "$what: SNI " . ($sni // 'none');
}

my $ngx = nginx();

# --- 1: IP literals ----------------------------------------------------------

my $r = dest($ngx, '127.0.0.1');
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   '127.0.0.1 8448 127.0.0.1 127.0.0.1', 'IPv4 literal: port 8448';
is $r->{how}, 'IP literal', '... said so';

$r = dest($ngx, "127.0.0.1:$P");
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "127.0.0.1 $P 127.0.0.1:$P 127.0.0.1", 'IPv4 literal with a port';

$r = dest($ngx, '[::1]');
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   '::1 8448 [::1] ::1', 'IPv6 literal: port 8448, Host with brackets';

$r = dest($ngx, '[::1]:8449');
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   '::1 8449 [::1]:8449 ::1', 'IPv6 literal with a port';

is $dns->query_count('127.0.0.1', 'A') + $dns->query_count('::1', 'AAAA'), 0,
    'literals are not looked up';
is wk_count(), 0,
    'nor is a well-known fetched for them';

# --- 2: explicit port ------------------------------------------------------------

$r = dest($ngx, "remote.test:$P", fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name} / $r->{how}",
   "remote.test $P remote.test:$P remote.test / explicit port",
   'hostname:port';
fetched($r, 'remote.test', "remote.test:$P", 'remote.test', 'explicit port');
is wk_count(), 0,
    'no well-known with an explicit port';

$r = dest($ngx, 'bad name');
is $r->{error} =~ /invalid server name/ ? 1 : 0, 1,
    'an invalid server name is refused';
is $r->{host}, '', '... with no destination';

# --- 3: well-known -----------------------------------------------------------------

$r = dest($ngx, 'wk-port.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "deleg.test $P deleg.test:$P deleg.test", '3.2 delegated name with a port';
is $r->{how}, 'well-known, explicit port', '... said so';
my @wk = $fake->requests(endpoint => 'well_known', server => 'wk-port.test');
is scalar(@wk), 1, 'the well-known was fetched once';
is $wk[0]{sni}, 'wk-port.test', '... over TLS for the server name';
fetched($r, 'deleg.test', "deleg.test:$P", 'deleg.test', '3.2');

$r = dest($ngx, 'wk-ip.test');
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "127.0.0.1 $P 127.0.0.1:$P 127.0.0.1", '3.1 delegated IP literal';
is $r->{how}, 'well-known, IP literal', '... said so';

$r = dest($ngx, 'wk-srv.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "srvtarget.test $P deleg-srv.test deleg-srv.test",
   '3.3 delegated name, SRV _matrix-fed._tcp: the target, Host and TLS '
   . 'name the delegated name';
is $r->{how}, 'well-known, SRV _matrix-fed._tcp', '... said so';
fetched($r, 'deleg-srv.test', 'deleg-srv.test', 'deleg-srv.test', '3.3');

$r = dest($ngx, 'wk-legacy.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "srvtarget.test $P deleg-legacy.test deleg-legacy.test",
   '3.4 delegated name, deprecated SRV _matrix._tcp';
is $r->{how}, 'well-known, SRV _matrix._tcp (deprecated)', '... said so';
is $dns->query_count('_matrix-fed._tcp.deleg-legacy.test', 'SRV'), 1,
    '... after _matrix-fed._tcp was asked for';
fetched($r, 'deleg-legacy.test', 'deleg-legacy.test', 'deleg-legacy.test',
        '3.4');

$r = dest($ngx, 'wk-none.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "deleg-none.test $P deleg-none.test deleg-none.test",
   '3.5 delegated name, no SRV: the fallback port';
is $r->{how}, 'well-known, port 8448', '... said so';
fetched($r, 'deleg-none.test', 'deleg-none.test', 'deleg-none.test', '3.5');

$r = dest($ngx, 'wk-redirect.test');
is "$r->{host} $r->{port} $r->{how}",
   "deleg.test $P well-known, explicit port", 'a redirect is followed';

$r = dest($ngx, 'wk-loop.test');
is $r->{how}, 'port 8448', 'a redirect loop is not followed for ever';
like $r->{well_known_error}, qr/redirect loop/, '... it is a failure';
cmp_ok wk_count(server => 'wk-loop.test'), '<=', 2,
    '... noticed at once';

# --- 4-6: no (valid) well-known ----------------------------------------------------------

$r = dest($ngx, 'wk-404.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name}",
   "srvtarget.test $P wk-404.test wk-404.test",
   '4 a 404 well-known: SRV _matrix-fed._tcp of the server name';
is $r->{how}, 'SRV _matrix-fed._tcp', '... said so';
like $r->{well_known_error}, qr/status 404/, '... because of the 404';
fetched($r, 'wk-404.test', 'wk-404.test', 'wk-404.test', '4');

$r = dest($ngx, 'wk-badjson.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name} / $r->{how}",
   "wk-badjson.test $P wk-badjson.test wk-badjson.test / port 8448",
   '6 invalid JSON: the server name on the fallback port';
like $r->{well_known_error}, qr/not a JSON object/, '... because of the JSON';
fetched($r, 'wk-badjson.test', 'wk-badjson.test', 'wk-badjson.test', '6');

$r = dest($ngx, 'wk-badname.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name} / $r->{how}",
   "srvtarget.test $P wk-badname.test wk-badname.test / "
   . 'SRV _matrix._tcp (deprecated)',
   '5 an invalid m.server: deprecated SRV of the server name';
like $r->{well_known_error}, qr/invalid "m\.server"/, '... because of it';
fetched($r, 'wk-badname.test', 'wk-badname.test', 'wk-badname.test', '5');

$r = dest($ngx, 'srv.test', fetch => 1);
is "$r->{host} $r->{port} $r->{how}", "srvtarget.test $P SRV _matrix-fed._tcp",
    '4 no well-known at all: _matrix-fed._tcp, before _matrix._tcp';
is $dns->query_count('_matrix._tcp.srv.test', 'SRV'), 0,
    '... which is not even asked for';
fetched($r, 'srv.test', 'srv.test', 'srv.test', '4 (no well-known)');

$r = dest($ngx, 'legacy.test');
is "$r->{host} $r->{port} $r->{host_header} $r->{how}",
   "srvtarget.test $P legacy.test SRV _matrix._tcp (deprecated)",
   '5 deprecated SRV of the server name';

$r = dest($ngx, 'plain.test', fetch => 1);
is "$r->{host} $r->{port} $r->{host_header} $r->{tls_name} / $r->{how}",
   "plain.test $P plain.test plain.test / port 8448", '6 nothing: the name';
fetched($r, 'plain.test', 'plain.test', 'plain.test', '6 (nothing)');

# --- caching ----------------------------------------------------------------------------

$dns->reset_queries;
$fake->reset;
for my $name (qw(wk-srv.test wk-404.test wk-port.test plain.test)) {
    dest($ngx, $name) for 1 .. 3;
}
is wk_count(), 0,
    'well-known answers, good and bad, are cached';
is $dns->query_count('_matrix-fed._tcp.deleg-srv.test', 'SRV')
   + $dns->query_count('_matrix-fed._tcp.wk-404.test', 'SRV')
   + $dns->query_count('_matrix-fed._tcp.plain.test', 'SRV')
   + $dns->query_count('_matrix._tcp.plain.test', 'SRV')
   + $dns->query_count('srvtarget.test', 'A'), 0,
    'SRV and A answers are cached'
    or diag explain [$dns->queries];

$r = dest($ngx, 'wk-short.test');
is $r->{host}, 'deleg.test', 'a well-known with max-age=1';
dest($ngx, 'wk-short.test');
is wk_count(server => 'wk-short.test'),
    1, '... is cached for a second';
sleep 2;
dest($ngx, 'wk-short.test');
is wk_count(server => 'wk-short.test'),
    2, '... and fetched again after it';

# --- the SSRF guard -------------------------------------------------------------------------

$r = dest($ngx, 'srv-private.test', fetch => 1);
is "$r->{host} $r->{how}", 'private-target.test SRV _matrix-fed._tcp',
    'an SRV target with a private address';
is $r->{status}, 0, '... is not connected to';
like $r->{fetch_error}, qr/10\.0\.0\.0\/8 private-use address, which is not allowed/,
    '... by the guard';

$r = dest($ngx, 'wk-private.test', fetch => 1);
is "$r->{host} $r->{port}", "private.test $P",
    'a delegated name with a private address';
is $r->{status}, 0, '... is not connected to';
like $r->{fetch_error}, qr/not allowed/, '... by the guard';

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

# --- the spec's ports, without the test's stand-ins ----------------------------------------

{
    my $spec = nginx(spec_ports => 1);

    $r = dest($spec, 'plain.test');
    is "$r->{host} $r->{port} $r->{how}", 'plain.test 8448 port 8448',
        'with no well-known (nothing on 443) and no SRV: port 8448';
    like $r->{well_known_error}, qr/connect|refused/,
        '... the well-known was tried on port 443';

    $spec->stop;
}

done_testing;
