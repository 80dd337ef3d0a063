# Inbound X-Matrix authentication on a real federation route
# (GET /_matrix/federation/v1/query/profile): requests signed by a fake
# remote homeserver, whose keys the module finds (SRV, then TLS to the
# fake) and fetches itself; refusals for every way a request can be
# wrong, each a 401 M_UNAUTHORIZED saying why.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use MatrixPg;
use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();

my $pg = MatrixPg->start;
$pg->silo_users;

my @names = qw(remote.test forged.test expired.test wrongname.test);
my $fake = MatrixFakeHS->start(names => \@names);
$fake->configure('forged.test', { key_mode => 'forged' });
$fake->configure('expired.test', { key_mode => 'expired' });
$fake->configure('wrongname.test', { key_mode => 'wrong_server_name' });

# no well-known (nothing on port 443), so SRV points at the fake
my %records = map {
    ($_ => { A => '127.0.0.1' },
     "_matrix-fed._tcp.$_" => { SRV => [[10, 5, $fake->port, $_]] })
} @names;
my $dns = MatrixDNS->start(records => \%records);

my $ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=2 timeout=3s;
@{[ $fake->nginx_federation($dns) ]}
EOF
    server => '        location /_matrix/ { matrix; }');

my $URI = '/_matrix/federation/v1/query/profile?user_id=%40alice%3Amodule.test';

sub signed {
    my ($origin, %o) = @_;
    return $fake->x_matrix($origin, method => $o{method} // 'GET',
                           uri => $o{uri} // $URI,
                           destination => $o{destination} // 'module.test',
                           exists $o{content} ? (content => $o{content}) : ());
}

sub get {
    my ($auth, $uri) = @_;
    my ($status, $head, $body) = $ngx->get($uri // $URI,
        defined $auth ? (Authorization => $auth) : ());
    return ($status, $body);
}

# --- a good request ------------------------------------------------------------

my ($status, $body) = get(signed('remote.test'));
is $status, 200, 'a request signed by remote.test';
is $body, '{"displayname":"Alice"}', 'gets the silo user\'s profile';

($status, $body) = get(signed('remote.test',
    uri => "$URI&field=displayname"), "$URI&field=displayname");
is $status, 200, 'with a field';

my $fetches = () = $fake->requests(endpoint => 'key');
get(signed('remote.test')) for 1 .. 3;
my $after = () = $fake->requests(endpoint => 'key');
is $after, $fetches, 'the keys are fetched once and kept';
cmp_ok $fetches, '>=', 1, 'they were fetched';

# signed for us, the destination left out of the header: it is ours
(my $no_dest = signed('remote.test')) =~ s/,?\s*destination="?[^",]+"?//;
unlike $no_dest, qr/destination/, 'a header without destination';
($status, $body) = get($no_dest);
is $status, 200, 'is accepted, as signed for this server';

# --- refusals ------------------------------------------------------------------------

sub refused {
    my ($auth, $why, $name, $uri) = @_;
    my ($status, $body) = get($auth, $uri);
    is $status, 401, "$name: 401";
    like $body, qr/^\{"errcode":"M_UNAUTHORIZED","error":"[^"]*$why/,
        "$name: says why";
}

refused(undef, 'Missing X-Matrix', 'no Authorization header');
refused('Bearer abc', 'Missing X-Matrix', 'another scheme');
refused('X-Matrix origin=remote.test,key="ed25519:1"', 'Invalid X-Matrix',
        'a header without sig');
refused(signed('remote.test', destination => 'elsewhere.test'),
        'another server', 'a request for another destination');
refused(signed('remote.test', uri => '/_matrix/federation/v1/query/profile'
                                      . '?user_id=%40bob%3Amodule.test'),
        'does not verify', 'a signature over another URI');
refused(signed('remote.test', method => 'POST'), 'does not verify',
        'a signature over another method');

my $auth = signed('remote.test');
(my $other_key = $auth) =~ s/key="ed25519:[^"]+"/key="ed25519:nosuchkey"/;
refused($other_key, 'Unknown or expired key', 'a key the origin does not have');

(my $other_origin = $auth) =~ s/origin="?remote\.test"?/origin="nowhere.test"/;
refused($other_origin, 'could not be fetched',
        'an origin whose keys cannot be fetched');

(my $bad_sig = $auth) =~ s/sig="([A-Za-z0-9+\/]{10})/sig="AAAAAAAAAA/;
refused($bad_sig, 'does not verify', 'a corrupted signature');

refused(signed('forged.test'), 'could not be fetched',
        'an origin whose key document is forged');
refused(signed('expired.test'), 'Unknown or expired key',
        'an origin whose keys expired');
refused(signed('wrongname.test'), 'could not be fetched',
        'an origin whose key document names another server');

($status) = get(signed('remote.test'));
is $status, 200, 'and good requests still pass';

# --- routes with a body: the content is signed too ---------------------------

my $KQ = '/_matrix/federation/v1/user/keys/query';
my $query = { device_keys => { '@alice:module.test' => [],
                               '@bob:elsewhere.test' => [] } };

sub post {
    my ($uri, $body, $auth) = @_;
    my ($status, $head, $resp) = $ngx->request('POST', $uri, $body,
        'Content-Type' => 'application/json',
        defined $auth ? (Authorization => $auth) : ());
    return ($status, $resp);
}

my $pretty = JSON::PP->new->pretty->encode($query);
($status, $body) = post($KQ, $pretty,
    signed('remote.test', method => 'POST', uri => $KQ, content => $query));
is $status, 200, 'a signed POST with a body (sent pretty-printed)';
is_deeply decode_json($body), { device_keys => { '@alice:module.test' => {} } },
    'keys/query: our user, with no devices; the other server\'s left out';

($status, $body) = post($KQ, encode_json($query),
    signed('remote.test', method => 'POST', uri => $KQ));
is $status, 401, 'a signature that leaves the content out: 401';
like $body, qr/does not verify/, 'says so';

my $other = { device_keys => { '@alice:module.test' => ['EVIL'] } };
($status, $body) = post($KQ, encode_json($other),
    signed('remote.test', method => 'POST', uri => $KQ, content => $query));
is $status, 401, 'a body other than the one signed: 401';

($status, $body) = post($KQ, '{"device_keys":',
    signed('remote.test', method => 'POST', uri => $KQ, content => $query));
is $status, 400, 'a body that is not JSON: 400';
like $body, qr/"errcode":"M_NOT_JSON"/, 'M_NOT_JSON';

($status, $body) = post($KQ, '[1,2]',
    signed('remote.test', method => 'POST', uri => $KQ, content => [1, 2]));
is $status, 400, 'a JSON body that is not an object: 400';
like $body, qr/"errcode":"M_BAD_JSON"/, 'M_BAD_JSON';

($status, $body) = post($KQ, encode_json({ device_keys => [] }),
    signed('remote.test', method => 'POST', uri => $KQ,
           content => { device_keys => [] }));
is $status, 400, 'keys/query without a device_keys object: 400';

($status, $body) = post($KQ, encode_json($query));
is $status, 401, 'a POST without X-Matrix: 401';

my $KC = '/_matrix/federation/v1/user/keys/claim';
my $claim = { one_time_keys => { '@alice:module.test' => { DEV => 'signed_curve25519' } } };
($status, $body) = post($KC, encode_json($claim),
    signed('remote.test', method => 'POST', uri => $KC, content => $claim));
is $status, 200, 'keys/claim';
is $body, '{"one_time_keys":{}}', 'nothing to claim';

my $UD = '/_matrix/federation/v1/user/devices/%40alice%3Amodule.test';
($status, $body) = get(signed('remote.test', uri => $UD), $UD);
is $status, 200, 'user/devices of a silo user';
is_deeply decode_json($body), { user_id => '@alice:module.test',
                                stream_id => 0, devices => [] },
    'an empty device list with a stream id';

for my $u ('%40nobody%3Amodule.test', '%40alice%3Aelsewhere.test') {
    my $uri = "/_matrix/federation/v1/user/devices/$u";
    ($status, $body) = get(signed('remote.test', uri => $uri), $uri);
    is $status, 404, "user/devices of $u: 404";
}

my $bad = '/_matrix/federation/v1/user/devices/alice';
($status, $body) = get(signed('remote.test', uri => $bad), $bad);
is $status, 400, 'user/devices of something that is no user ID: 400';

($status) = $ngx->get('/_matrix/key/v2/server');
is $status, 200, 'the key server needs no authentication';
($status) = $ngx->get('/_matrix/federation/v1/version');
is $status, 200, 'nor the version';

$ngx->stop;
my $log = $ngx->error_log;
unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
like $log, qr/keys of "forged\.test": its key document was refused/,
    'a refused key document is logged with the reason';

# --- kept in Postgres: a restart does not refetch -------------------------------

is $pg->psql(q{SELECT count(*) FROM matrix.server_key_json
               WHERE server_name = 'remote.test'
                 AND from_server = 'remote.test'}), '1',
    'the key document of remote.test is kept in the database';
is $pg->psql(q{SELECT count(*) FROM matrix.server_key_json
               WHERE server_name = 'forged.test'}), '0',
    'a refused one is not';

my $before = () = $fake->requests(endpoint => 'key');

$ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=2 timeout=3s;
@{[ $fake->nginx_federation($dns) ]}
EOF
    server => '        location /_matrix/ { matrix; }');

($status) = get(signed('remote.test'));
is $status, 200, 'after a restart, a signed request';
is scalar(() = $fake->requests(endpoint => 'key')), $before,
    'is checked with the key from the database, not fetched again';

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;
