# The federation caches in shared memory (matrix_federation_cache), with
# several workers and connections spread over all of them (reuseport):
# other servers' keys are fetched once for every worker, and once for
# concurrent requests in several workers; a well-known is fetched once;
# both survive "nginx -s reload"; a tiny zone evicts without errors; the
# trusted notary asked for a server that is down is asked once for every
# worker.
#
# No Postgres here on purpose: with a database, a worker that has not
# seen a server would read its keys there, and a per-worker cache would
# pass for a shared one.

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

my $WORKERS = 4;
my $MANY = 40;
my @flood = map { "flood$_.test" } 1 .. 60;

my @names = (qw(remote.test slow.test wk.test deleg.test dying.test
                 gone.test notary.test), @flood);
my $fake = MatrixFakeHS->start(names => \@names);
my $P = $fake->port;
my ($notary_kid, $notary_key) = $fake->public_key('notary.test');

$fake->configure('slow.test', { behaviour => { key => { delay_ms => 1500 } } });
$fake->configure('dying.test', { behaviour => { key => { delay_ms => 2000 } } });
$fake->configure('wk.test', { well_known => { 'm.server' => "deleg.test:$P" } });
$fake->configure('notary.test',
                 { behaviour => { notary => { delay_ms => 1500 } } });

my %records = map {
    ($_ => { A => '127.0.0.1' },
     "_matrix-fed._tcp.$_" => { SRV => [[10, 5, $P, $_]] })
} grep { $_ ne 'gone.test' } @names;
my $dns = MatrixDNS->start(records => \%records);

sub nginx {
    my (%o) = @_;
    return MatrixNginx->start(workers => $WORKERS, listen => 'reuseport',
        http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
@{[ $fake->nginx_federation($dns) ]}
    matrix_federation_trusted_key_server notary.test $notary_kid=$notary_key;
    @{[ $o{cache} ? "matrix_federation_cache $o{cache};" : '' ]}
EOF
        server => <<"EOF");
        add_header X-Worker \$pid always;
        location /_matrix/ { matrix; }
        location /dest { matrix_destinationtest $P $P; }
EOF
}

my $URI = '/_matrix/federation/v1/query/profile?user_id=%40alice%3Amodule.test';

# a request signed by origin, on a connection of its own:
# (status, the worker that answered)
sub signed_send {
    my ($ngx, $origin) = @_;
    return $ngx->send_get($URI, Authorization => $fake->x_matrix($origin,
        method => 'GET', uri => $URI, destination => 'module.test'));
}

sub answered {
    my ($ngx, $s) = @_;
    my ($status, $head) = $ngx->read_response($s);
    my ($pid) = $head =~ /^X-Worker: (\d+)/mi;
    return ($status, $pid // 0);
}

sub key_fetches {
    my ($server) = @_;
    return scalar(() = $fake->requests(endpoint => 'key', server => $server));
}

sub notary_asked {
    my ($server) = @_;
    return scalar grep { $_->{method} eq 'POST'
                         && exists $_->{json}{server_keys}{$server} }
           $fake->requests(endpoint => 'notary', server => 'notary.test');
}

sub wk_fetches {
    my ($server) = @_;
    return scalar(() = $fake->requests(endpoint => 'well_known',
                                       server => $server));
}

# (statuses, workers seen) of n requests made one after the other
sub many_signed {
    my ($ngx, $origin, $n) = @_;
    my (%status, %pid);
    for (1 .. $n) {
        my ($status, $pid) = answered($ngx, signed_send($ngx, $origin));
        $status{$status}++;
        $pid{$pid}++;
    }
    return (\%status, \%pid);
}

sub many_dest {
    my ($ngx, $name, $n) = @_;
    my (%delegated, %pid);
    for (1 .. $n) {
        my ($status, $head, $body) = $ngx->get('/dest?server_name='
                                               . uri_escape($name));
        my ($pid) = $head =~ /^X-Worker: (\d+)/mi;
        $pid{$pid // 0}++;
        $delegated{$body =~ /^host_header: (.*)$/m ? $1 : "status $status"}++;
    }
    return (\%delegated, \%pid);
}

my $ngx = nginx();

# --- keys: fetched by one worker, known to all -------------------------------------

my ($status) = answered($ngx, signed_send($ngx, 'remote.test'));
isnt $status, 401, 'a request signed by remote.test is authenticated';
is key_fetches('remote.test'), 1, 'its keys were fetched';

my ($statuses, $pids) = many_signed($ngx, 'remote.test', $MANY);
ok !$statuses->{401}, "$MANY more requests are authenticated"
    or diag explain $statuses;
cmp_ok scalar(keys %$pids), '>=', 2, 'they were answered by several workers'
    or diag explain $pids;
is key_fetches('remote.test'), 1, 'and the keys were not fetched again';

# --- keys: concurrent requests in all workers share one fetch -----------------------

my @s = map { signed_send($ngx, 'slow.test') } 1 .. 3 * $WORKERS;
my (%st, %pid);
for my $s (@s) {
    my ($status, $pid) = answered($ngx, $s);
    $st{$status}++;
    $pid{$pid}++;
}
ok !$st{401} && !$st{0}, 'concurrent requests signed by a slow server pass'
    or diag explain \%st;
cmp_ok scalar(keys %pid), '>=', 2, 'in several workers' or diag explain \%pid;
is key_fetches('slow.test'), 1, 'with one fetch of its keys';

# --- keys through the trusted notary: asked once for all workers -----------------
#
# gone.test is not in the DNS; the notary is slow, so the requests in
# the other workers come while the first worker's fetch is asking it.

@s = map { signed_send($ngx, 'gone.test') } 1 .. 3 * $WORKERS;
(%st, %pid) = ();
for my $s (@s) {
    my ($status, $pid) = answered($ngx, $s);
    $st{$status}++;
    $pid{$pid}++;
}
ok !$st{401} && !$st{0}, 'concurrent requests signed by a server that is down '
                         . 'pass, through the notary' or diag explain \%st;
cmp_ok scalar(keys %pid), '>=', 2, 'in several workers' or diag explain \%pid;
is notary_asked('gone.test'), 1, 'the notary was asked once';

($statuses, $pids) = many_signed($ngx, 'gone.test', $MANY / 2);
ok !$statuses->{401}, 'later requests signed by it pass in every worker'
    or diag explain $statuses;
is notary_asked('gone.test'), 1, 'without asking the notary again';

# --- the well-known: fetched once for all workers ----------------------------------------

my ($delegated) = many_dest($ngx, 'wk.test', 1);
is_deeply $delegated, { "deleg.test:$P" => 1 }, 'wk.test is delegated';
is wk_fetches('wk.test'), 1, 'its well-known was fetched';

($delegated, $pids) = many_dest($ngx, 'wk.test', $MANY);
is_deeply $delegated, { "deleg.test:$P" => $MANY },
    "$MANY more lookups: the same delegation";
cmp_ok scalar(keys %$pids), '>=', 2, 'in several workers' or diag explain $pids;
is wk_fetches('wk.test'), 1, 'without fetching the well-known again';

# --- a reload keeps both -----------------------------------------------------------------

my $keys_before = key_fetches('remote.test');
ok $ngx->reload, 'nginx -s reload: all workers are new';

($statuses, $pids) = many_signed($ngx, 'remote.test', $MANY / 2);
ok !$statuses->{401}, 'after the reload, signed requests are authenticated'
    or diag explain $statuses;
is key_fetches('remote.test'), $keys_before, 'with the keys fetched before it';

($delegated) = many_dest($ngx, 'wk.test', $MANY / 2);
is_deeply $delegated, { "deleg.test:$P" => $MANY / 2 },
    'and discovery gives the same delegation';
is wk_fetches('wk.test'), 1, 'from the well-known fetched before it';

$ngx->stop;
my $log = $ngx->error_log;
unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts' or diag $log;
unlike $log, qr/worker process \d+ exited on signal/, 'no worker crashed';

# --- a worker killed while fetching holds nobody up -------------------------------
#
# The zone says which worker fetches, until a minute from then; the
# others check that it is alive (its connection to the fake shows it).

$ngx = nginx();

my $first_req = signed_send($ngx, 'dying.test');
my $fetcher;
for (1 .. 100) {
    my $ss = `ss -tnpH state established dst 127.0.0.1:$P 2>/dev/null`;
    last if ($fetcher) = $ss =~ /"nginx",pid=(\d+)/;
    select undef, undef, undef, 0.05;
}
ok $fetcher, 'a worker is fetching the keys of dying.test';
kill 'KILL', $fetcher if $fetcher;
close $first_req;

my ($late, $late_pid) = answered($ngx, signed_send($ngx, 'dying.test'));
isnt $late, 401, 'a request signed by it, after that worker was killed';
isnt $late, 0, 'is answered well before the fetch\'s time is up';
is key_fetches('dying.test'), 2, 'by another worker fetching again';

$ngx->stop;

# --- a tiny zone with many servers: evicted, not failed ------------------------------

$fake->reset;
$ngx = nginx(cache => '64k');

my $ok = 0;
for my $name (@flood) {
    my ($status, $head, $body) = $ngx->get("/_matrix/key/v2/query/$name");
    my $doc = eval { decode_json($body) } || {};
    $ok++ if $status == 200 && grep { ($_->{server_name} // '') eq $name }
                                    @{ $doc->{server_keys} || [] };
}
is $ok, scalar @flood, 'a 64k zone: the notary serves every one of '
                       . scalar(@flood) . ' servers';

my ($first) = @flood;
my $before = key_fetches($first);
($status) = $ngx->get("/_matrix/key/v2/query/$first");
is $status, 200, 'the first server again';
cmp_ok key_fetches($first), '>', $before,
    'its keys were evicted by the later ones, and fetched again';

($status) = answered($ngx, signed_send($ngx, $flood[-1]));
isnt $status, 401, 'a request signed by the last one is authenticated';

$ngx->stop;
$log = $ngx->error_log;
unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts' or diag $log;
unlike $log, qr/no memory|exited on signal/, 'no slab errors or crashes';

# --- the directive -------------------------------------------------------------------

my $bad = eval { nginx(cache => '16k') };
ok !$bad, 'a zone below 64k is refused';
like $@, qr/matrix_federation_cache: "16k" is too small, at least 64k/,
    'saying so, with the directive and the value';

done_testing;
