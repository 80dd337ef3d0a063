# A remote homeserver joins a silo room over federation: make_join,
# send_join (v1 and v2), and the room's events made on first use from
# the reference silo (examples/silo: schema, seed and the operator's
# mapping), against a fake homeserver (python3-signedjson) that signs
# its requests and its events.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use FindBin;

use MatrixPg;
use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();
plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};

my $SILO = "$FindBin::Bin/../examples/silo";
my $JSON = JSON::PP->new->canonical;

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "$path: $!";
    local $/;
    return scalar <$fh>;
}

my $pg = MatrixPg->start;
$pg->psql(slurp("$SILO/schema.sql"));
$pg->psql(slurp("$SILO/seed.sql"));
system($ENV{MATRIX_TOOL}, 'migrate', $pg->conninfo) == 0
    or BAIL_OUT('matrix-tool migrate failed');
$pg->psql(slurp("$SILO/matrix.sql"));

my $fake = MatrixFakeHS->start(names => ['remote.test']);
my $dns = MatrixDNS->start(records => {
    'remote.test' => { A => '127.0.0.1' },
    '_matrix-fed._tcp.remote.test' => { SRV => [[10, 5, $fake->port, 'remote.test']] },
});

my $ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=4 timeout=10s;
    matrix_federation_resolver @{[ $dns->resolver ]} ipv6=off;
    matrix_federation_trusted_certificate @{[ $fake->ca_file ]};
    matrix_federation_allow_ip 127.0.0.0/8;
    client_body_buffer_size 1m;
EOF
    server => '        location /_matrix/ { matrix; }');

# the silo's rooms get their IDs from the directory; here, by hand
$pg->psql(q{INSERT INTO matrix.matrix_rooms (room_id, silo_room_id, room_version)
            VALUES ('!general:module.test', '1', '10'),
                   ('!private:module.test', '3', '10')});

sub fed {
    my ($method, $uri, $content) = @_;
    my $auth = $fake->x_matrix('remote.test', method => $method, uri => $uri,
                               destination => 'module.test',
                               defined $content ? (content => $content) : ());
    my ($status, $head, $body) = $ngx->request($method, $uri,
        defined $content ? $JSON->encode($content) : undef,
        Authorization => $auth,
        defined $content ? ('Content-Type' => 'application/json') : ());
    my $json = eval { decode_json($body) };
    return ($status, $json, $body);
}

my $ROOM = '!general:module.test';
my $USER = '@carol:remote.test';

my ($status, $json, $body) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=9&ver=10");
is $status, 200, 'make_join: 200' or diag $body;
is $json->{room_version}, '10', 'the room version';
my $tpl = $json->{event};
is $tpl->{type}, 'm.room.member', 'a member event';
is $tpl->{state_key}, $USER, 'for the user';
is $tpl->{sender}, $USER, 'sent by the user';
is $tpl->{content}{membership}, 'join', 'a join';
is $tpl->{room_id}, $ROOM, 'in the room';
cmp_ok scalar @{ $tpl->{prev_events} }, '>=', 1, 'after the room\'s head';
cmp_ok scalar @{ $tpl->{auth_events} }, '>=', 3, 'create, power levels, join rules';
cmp_ok $tpl->{depth}, '>', 10, 'deep: the history is there';

my $count = $pg->psql(q{SELECT count(*) FROM matrix.events e
                          JOIN matrix.matrix_rooms r USING (room_nid)
                         WHERE r.room_id = '!general:module.test'});
diag "events made: $count";

($status, $json, $body) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=1&ver=abc");
is $status, 400, 'make_join without the room version: 400';
is $json->{errcode}, 'M_INCOMPATIBLE_ROOM_VERSION', 'M_INCOMPATIBLE_ROOM_VERSION';
is $json->{room_version}, '10', 'says which';

($status, $json) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/\@dave:elsewhere.test?ver=10");
is $status, 403, 'make_join for another server\'s user: 403';

($status, $json) = fed('GET',
    "/_matrix/federation/v1/make_join/!private:module.test/$USER?ver=10");
is $status, 403, 'make_join to a room the silo keeps private: 403';

($status, $json) = fed('GET',
    "/_matrix/federation/v1/make_join/!nope:module.test/$USER?ver=10");
is $status, 404, 'make_join to an unknown room: 404';

my $again = $pg->psql(q{SELECT count(*) FROM matrix.events e
                          JOIN matrix.matrix_rooms r USING (room_nid)
                         WHERE r.room_id = '!general:module.test'});
is $again, $count, 'the room\'s events are made once';

unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;
