# The room directory over federation, against the reference silo
# (examples/silo, with more rooms added): GET query/directory (an alias
# to its room ID, allocated on first sight, the same from every worker
# and under concurrent requests) and GET and POST publicRooms (public
# rooms only, paged forwards and backwards, search, room_types, limits,
# strict paging tokens).  Requests are X-Matrix signed by a fake remote
# homeserver; responses are checked against the shapes of
# server-server.json by hand.

use strict;
use warnings;
use utf8;

use Test::More;
use IPC::Run qw(timeout);
use JSON::PP;

use MatrixPg;
use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;

plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};
plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();

# ------------------------------------------------------------------ setup

my $pg = MatrixPg->start;
$pg->example_silo;

# 24 more public rooms (ids 4..27) with 0 to 6 members, so that member
# counts tie and pages cut through ties; 3 more private ones; names and
# topics to search; avatars of both kinds
$pg->psql(<<'SQL');
INSERT INTO chat.rooms (id, slug, name, topic, visibility, avatar_url)
OVERRIDING SYSTEM VALUE
SELECT i, 'room' || lpad(i::text, 2, '0'), 'Room ' || i,
       CASE WHEN i % 5 = 0 THEN 'Cooking and BAKING' END,
       'public',
       CASE WHEN i = 4 THEN 'mxc://module.test/avatar4'
            WHEN i = 5 THEN 'https://example.org/a.png' END
  FROM generate_series(4, 27) i;
UPDATE chat.rooms SET name = '100% pure' WHERE id = 6;
UPDATE chat.rooms SET name = 'snake_case' WHERE id = 7;
INSERT INTO chat.rooms (id, slug, name, visibility)
OVERRIDING SYSTEM VALUE
SELECT i, 'secret' || i, 'Secret ' || i, 'private'
  FROM generate_series(28, 30) i;
INSERT INTO chat.memberships (room_id, user_id)
SELECT r, u FROM generate_series(4, 30) r, generate_series(1, 6) u
 WHERE u <= r % 7;
SQL

my @PUBLIC = split /\n/, $pg->psql(
    "SELECT room_id FROM matrix_silo.rooms WHERE is_public
      ORDER BY member_count DESC, room_id");
is scalar @PUBLIC, 26, 'the silo has 26 public rooms';

my $fake = MatrixFakeHS->start(names => ['remote.test']);
my $dns = MatrixDNS->start(records => {
    'remote.test' => { A => '127.0.0.1' },
    '_matrix-fed._tcp.remote.test' => { SRV => [[10, 5, $fake->port,
                                                 'remote.test']] } });

sub nginx {
    my (%o) = @_;
    return MatrixNginx->start(workers => 2, http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=4 timeout=5s;
    matrix_federation_resolver @{[ $dns->resolver ]} ipv6=off;
    matrix_federation_trusted_certificate @{[ $fake->ca_file ]};
    matrix_federation_allow_ip 127.0.0.0/8;
    @{[ $o{extra} // '' ]}
EOF
        server => '        location /_matrix/ { matrix; }');
}

my $ngx = nginx();

# ---------------------------------------------------------------- helpers

sub auth {
    my ($method, $uri, $content) = @_;
    return $fake->x_matrix('remote.test', method => $method, uri => $uri,
                           destination => 'module.test',
                           defined $content ? (content => $content) : ());
}

# (status, decoded body or raw text)
sub fed_get {
    my ($uri, %o) = @_;
    my ($status, undef, $body) = $ngx->get($uri,
        $o{unsigned} ? () : (Authorization => auth('GET', $uri)));
    my $json = eval { decode_json($body) };
    return ($status, $json // $body);
}

sub fed_post {
    my ($uri, $content, %o) = @_;
    my $raw = ref $content ? encode_json($content) : $content;
    my ($status, undef, $body) = $ngx->request('POST', $uri, $raw,
        'Content-Type' => 'application/json',
        $o{unsigned} ? ()
                     : (Authorization => auth('POST', $uri,
                                               ref $content ? $content
                                               : decode_json($content))));
    my $json = eval { decode_json($body) };
    return ($status, $json // $body);
}

sub esc {
    my ($s) = @_;
    utf8::encode($s);
    $s =~ s/([^A-Za-z0-9._~-])/sprintf '%%%02X', ord $1/ge;
    return $s;
}

my $DIR = '/_matrix/federation/v1/query/directory';
my $PR = '/_matrix/federation/v1/publicRooms';

sub directory { fed_get("$DIR?room_alias=" . esc($_[0])) }

sub error_is {
    my ($got, $status, $errcode, $name) = @_;
    is $got->[0], $status, "$name: $status";
    is ref $got->[1] eq 'HASH' ? $got->[1]{errcode} : $got->[1], $errcode,
        "$name: $errcode";
}

my $ROOM_ID = qr/^![A-Za-z0-9_-]{18,}:module\.test$/;

# the room IDs the module gave out, by silo room
sub allocated {
    return { map { split /\|/ } split /\n/, $pg->psql(
        'SELECT silo_room_id, room_id FROM matrix.matrix_rooms') };
}

# ------------------------------------------------- query/directory

my ($status, $body) = directory('#general:module.test');
is $status, 200, 'an alias of ours: 200';
is_deeply [sort keys %$body], [qw(room_id servers)],
    'room_id and servers, nothing else';
like $body->{room_id}, $ROOM_ID, 'a room ID of this server';
is_deeply $body->{servers}, ['module.test'], 'servers: this one';
my $general = $body->{room_id};

is $pg->psql("SELECT silo_room_id || ' ' || room_version
                FROM matrix.matrix_rooms WHERE room_id = '$general'"),
   '1 10', 'kept in matrix_rooms, with the configured room version';
is $pg->psql('SELECT count(*) FROM matrix.events'), '0',
   'and no events made for it';

for (1 .. 4) {
    ($status, $body) = directory('#general:module.test');
    is $body->{room_id}, $general, "asked again ($_): the same room ID";
}

# concurrent first requests, over both workers
{
    my $uri = "$DIR?room_alias=" . esc('#room12:module.test');
    my $auth = auth('GET', $uri);
    my @socks = map { $ngx->send_get($uri, Authorization => $auth) } 1 .. 12;
    my %ids;
    my $ok = 0;
    for my $s (@socks) {
        my ($st, undef, $b) = $ngx->read_response($s);
        $ok++ if $st == 200;
        $ids{ eval { decode_json($b)->{room_id} } // 'none' }++;
    }
    is $ok, 12, '12 concurrent first requests for an alias: all 200';
    is scalar(keys %ids), 1, 'all with the same room ID';
    is $pg->psql("SELECT count(*) FROM matrix.matrix_rooms
                   WHERE silo_room_id = '12'"), '1', 'one row';
    is((keys %ids)[0], allocated()->{12}, 'the one kept');
}

# the race itself, held open: another node has inserted rooms 14 and 15
# and not committed yet; the requests wait for it and take its IDs
{
    my ($in, $out, $err) = ('', '', '');
    my $h = IPC::Run::start(['psql', '-X', '-q', '-A', '-t', '-v',
                             'ON_ERROR_STOP=1', '-h', $pg->host,
                             '-U', 'postgres', '-d', 'matrix'],
                            \$in, \$out, \$err, timeout(60));
    $in .= "BEGIN; INSERT INTO matrix.matrix_rooms
                   (room_id, silo_room_id, room_version) VALUES
                   ('!heldfourteen1234567:module.test', '14', '10'),
                   ('!heldfifteen12345678:module.test', '15', '10');
            SELECT 'held';\n";
    $h->pump until $out =~ /held/;

    my $dir_uri = "$DIR?room_alias=" . esc('#room14:module.test');
    my $dir = $ngx->send_get($dir_uri, Authorization => auth('GET', $dir_uri));
    my $list = $ngx->send_get($PR, Authorization => auth('GET', $PR));

    my $waiting = 0;
    for (1 .. 100) {
        $waiting = $pg->psql("SELECT count(*) FROM pg_stat_activity
                               WHERE wait_event_type = 'Lock'");
        last if $waiting >= 2;
        select undef, undef, undef, 0.05;
    }
    is $waiting, 2, 'both requests wait for the other insert';

    $in .= "COMMIT; SELECT 'done';\n";
    $h->pump until $out =~ /done/;
    $in .= "\\q\n";
    $h->finish;

    my ($st, undef, $b) = $ngx->read_response($dir);
    is $st, 200, 'the directory, after the other commit';
    is decode_json($b)->{room_id}, '!heldfourteen1234567:module.test',
       'answers the ID the other committed';
    ($st, undef, $b) = $ngx->read_response($list);
    is $st, 200, 'publicRooms, after the other commit';
    my @held = grep { $_ =~ /^!held/ } map { $_->{room_id} }
               @{ decode_json($b)->{chunk} };
    is_deeply [sort @held], ['!heldfifteen12345678:module.test',
                             '!heldfourteen1234567:module.test'],
        'lists the IDs the other committed';
    is $pg->psql("SELECT count(*) FROM matrix.matrix_rooms
                   WHERE silo_room_id IN ('14', '15')"), '2', 'one row each';
}

error_is([directory('#nosuchroom:module.test')], 404, 'M_NOT_FOUND',
         'an unknown alias');
error_is([directory('#general:elsewhere.test')], 404, 'M_NOT_FOUND',
         'an alias of another server');
error_is([directory('#staff:module.test')], 404, 'M_NOT_FOUND',
         'a private room (no alias)');
error_is([fed_get($DIR)], 400, 'M_MISSING_PARAM', 'no room_alias');
error_is([fed_get("$DIR?other=1")], 400, 'M_MISSING_PARAM',
         'another parameter only');
for my $bad ('general', '#general', '!general:module.test', '#:module.test',
             '#general:', '#' . ('a' x 260) . ':module.test')
{
    error_is([directory($bad)], 400, 'M_INVALID_PARAM', "room_alias $bad");
}
error_is([fed_get("$DIR?room_alias=%23g%FFn%3Amodule.test")], 400,
         'M_INVALID_PARAM', 'an alias that is not UTF-8');
error_is([fed_get("$DIR?room_alias=%23g%00n%3Amodule.test")], 400,
         'M_INVALID_PARAM', 'an alias with a NUL');
($status, $body) = directory("#caf\x{e9}:module.test");
is $status, 404, 'a UTF-8 alias that is no room: 404';

error_is([fed_get("$DIR?room_alias=%23general%3Amodule.test",
                  unsigned => 1)], 401, 'M_UNAUTHORIZED', 'unsigned');

# ------------------------------------------------------ publicRooms

my %CHUNK_KEYS = map { $_ => 1 } qw(room_id name topic canonical_alias
    num_joined_members world_readable guest_can_join join_rule avatar_url
    room_type);

# every room of a response as server-server.json's PublishedRoomsChunk
sub check_shape {
    my ($resp, $name) = @_;
    my @bad;
    push @bad, 'not an object' unless ref $resp eq 'HASH';
    push @bad, 'chunk' unless ref $resp->{chunk} eq 'ARRAY';
    for my $k (keys %$resp) {
        push @bad, "key $k" unless $k =~ /^(chunk|next_batch|prev_batch|
                                            total_room_count_estimate)$/x;
    }
    for my $k (qw(next_batch prev_batch)) {
        push @bad, $k if exists $resp->{$k}
            && (ref $resp->{$k} || $resp->{$k} !~ /^[np]\d+\.\d+$/);
    }
    push @bad, 'total' if exists $resp->{total_room_count_estimate}
        && $resp->{total_room_count_estimate} !~ /^\d+$/;
    for my $c (@{ $resp->{chunk} // [] }) {
        push @bad, grep { !$CHUNK_KEYS{$_} } keys %$c;
        push @bad, 'room_id' unless ($c->{room_id} // '') =~ $ROOM_ID;
        push @bad, 'num_joined_members'
            unless ($c->{num_joined_members} // '') =~ /^\d+$/;
        push @bad, 'booleans' unless
            JSON::PP::is_bool($c->{world_readable}) && !$c->{world_readable}
            && JSON::PP::is_bool($c->{guest_can_join}) && !$c->{guest_can_join};
        push @bad, 'join_rule' unless ($c->{join_rule} // '') eq 'public';
        push @bad, 'alias' if exists $c->{canonical_alias}
            && $c->{canonical_alias} !~ /^#[^:]+:module\.test$/;
        push @bad, 'avatar' if exists $c->{avatar_url}
            && $c->{avatar_url} !~ m{^mxc://};
        for (qw(name topic)) {
            push @bad, $_ if exists $c->{$_} && ref $c->{$_};
        }
    }
    ok !@bad, "$name: the spec's shape" or diag "@bad";
}

sub rooms_of { [map { $_->{room_id} } @{ $_[0]{chunk} }] }

($status, $body) = fed_get($PR);
is $status, 200, 'GET publicRooms';
check_shape($body, 'GET publicRooms');
is scalar @{ $body->{chunk} }, 26, 'no limit: all 26 public rooms at once';
ok !exists $body->{next_batch} && !exists $body->{prev_batch},
   'one page: no tokens';
is $body->{total_room_count_estimate}, 26, 'total_room_count_estimate';

my $ids = allocated();
is_deeply rooms_of($body), [map { $ids->{$_} } @PUBLIC],
    'ordered by member count, then silo room, with the IDs allocated';
ok !(grep { !defined $ids->{$_} } @PUBLIC), 'every listed room has an ID';
ok !(grep { defined $ids->{$_} } 3, 28 .. 30), 'private rooms have none';

my ($gen) = grep { $_->{room_id} eq $general } @{ $body->{chunk} };
is_deeply $gen, { room_id => $general, name => 'General',
    topic => 'Everything about the project: questions, help, announcements',
    canonical_alias => '#general:module.test', num_joined_members => 7,
    world_readable => JSON::PP::false, guest_can_join => JSON::PP::false,
    join_rule => 'public' }, 'general: the whole entry, 7 members';
is $gen->{room_id}, $general, 'the same ID as the directory gave';

my %by_id = map { $_->{room_id} => $_ } @{ $body->{chunk} };
is $by_id{ $ids->{4} }{avatar_url}, 'mxc://module.test/avatar4',
   'an mxc:// avatar is published';
ok !exists $by_id{ $ids->{5} }{avatar_url}, 'an https:// one is not';
ok !exists $by_id{ $ids->{4} }{topic}, 'no topic: no key';
is $by_id{ $ids->{$_} }{num_joined_members}, $_ % 7,
   "room $_: num_joined_members" for 4, 9, 13;
is $by_id{ $ids->{2} }{num_joined_members}, 5, 'random: 5 members';

# paging: forwards to the end, then backwards to the start
sub walk {
    my ($fetch, $limit, $name) = @_;
    my (@seen, @pages, $since);
    for my $n (1 .. 40) {
        my ($st, $b) = $fetch->($limit, $since);
        is $st, 200, "$name: page $n" or last;
        check_shape($b, "$name: page $n");
        ok @{ $b->{chunk} } <= $limit, "$name: page $n within the limit";
        push @seen, @{ rooms_of($b) };
        push @pages, $b;
        $since = $b->{next_batch} // last;
    }
    is_deeply \@seen, [map { $ids->{$_} } @PUBLIC],
        "$name: every public room once, in order";
    ok !exists $pages[0]{prev_batch}, "$name: no prev_batch on the first";

    my @back;
    $since = $pages[-1]{prev_batch};
    for my $n (1 .. 40) {
        last unless defined $since;
        my ($st, $b) = $fetch->($limit, $since);
        is $st, 200, "$name: back page $n" or last;
        unshift @back, @{ rooms_of($b) };
        is_deeply rooms_of($b), rooms_of($pages[-1 - $n]),
            "$name: back page $n is the same as forwards";
        $since = $b->{prev_batch};
    }
    is scalar @back, @seen - @{ $pages[-1]{chunk} },
        "$name: backwards reaches the first page";
}

walk(sub {
    my ($limit, $since) = @_;
    fed_get("$PR?limit=$limit" . (defined $since ? "&since=$since" : ''));
}, 5, 'GET limit=5');

walk(sub {
    my ($limit, $since) = @_;
    fed_post($PR, { limit => $limit, defined $since ? (since => $since) : ()});
}, 4, 'POST limit 4');

walk(sub {
    my ($limit, $since) = @_;
    fed_post($PR, { limit => $limit, filter => { room_types => [undef] },
                    include_all_networks => JSON::PP::false,
                    defined $since ? (since => $since) : () });
}, 7, 'POST room_types [null]');

($status, $body) = fed_get("$PR?limit=1");
is scalar @{ $body->{chunk} }, 1, 'limit=1: one room';
ok defined $body->{next_batch}, 'and a next_batch';

for my $l (0, 1000) {
    ($status, $body) = fed_get("$PR?limit=$l");
    is scalar @{ $body->{chunk} }, 26, "limit=$l: all (at most 500)";
}
($status, $body) = fed_post($PR, { limit => 0 });
is scalar @{ $body->{chunk} }, 26, 'POST limit 0: all';

error_is([fed_get("$PR?limit=$_")], 400, 'M_INVALID_PARAM', "limit=$_")
    for '-1', 'abc', '1.5', '', '99999999999999999999';
error_is([fed_post($PR, { limit => -3 })], 400, 'M_INVALID_PARAM',
         'POST limit -3');
error_is([fed_post($PR, { limit => '5' })], 400, 'M_BAD_JSON',
         'POST limit "5"');
error_is([fed_post($PR, { limit => JSON::PP::true })], 400, 'M_BAD_JSON',
         'POST limit true');

for my $since ('garbage', 'n', 'n1', 'n1.', 'n.1', 'x1.1', 'n1.0', 'n-1.1',
               'n1.-1', 'n1.1x', 'p1.1.1', 'n1.99999', 'n1.99999999999',
               'n1234567890123456789.1', "n1.1'; DROP TABLE x")
{
    error_is([fed_get("$PR?since=" . esc($since))], 400, 'M_INVALID_PARAM',
             "GET since=$since");
}
error_is([fed_post($PR, { since => 'bogus' })], 400, 'M_INVALID_PARAM',
         'POST since bogus');
error_is([fed_post($PR, { since => 5 })], 400, 'M_BAD_JSON',
         'POST since 5');

# search
sub search {
    my ($term, %o) = @_;
    my ($st, $b) = fed_post($PR, { filter => { generic_search_term => $term },
                                   %o });
    is $st, 200, "search \"$term\": 200";
    check_shape($b, "search \"$term\"");
    return $b;
}

is_deeply rooms_of(search('GENER')), [$general],
    'search by name, case-insensitively';
is_deeply [sort @{ rooms_of(search('baking')) }],
    [sort map { $ids->{$_} } 5, 10, 15, 20, 25], 'search by topic';
is search('baking')->{total_room_count_estimate}, 5,
   'the estimate counts the matches';
is_deeply rooms_of(search('#random')), [], 'the alias is the localpart';
is_deeply rooms_of(search('room05')), [$ids->{5}], 'search by alias';
is_deeply rooms_of(search('%')), [$ids->{6}], '% is literal';
is_deeply rooms_of(search('_')), [$ids->{7}], '_ is literal';
is_deeply rooms_of(search('\\')), [], '\\ is literal';
is_deeply rooms_of(search('staff')), [], 'private rooms are not searched';
is scalar @{ search('')->{chunk} }, 26, 'an empty term matches all';
{
    my $b = search('room', limit => 10);
    is scalar @{ $b->{chunk} }, 10, 'a search is paged';
    my ($st, $b2) = fed_post($PR, { filter => { generic_search_term => 'room'},
                                    limit => 100, since => $b->{next_batch} });
    is scalar @{ $b2->{chunk} }, 14, 'its next page has the rest';
}
error_is([fed_post($PR, { filter => { generic_search_term => 'x' x 300 } })],
         400, 'M_INVALID_PARAM', 'a search term over 256 bytes');
error_is([fed_post($PR, { filter => { generic_search_term => 5 } })],
         400, 'M_BAD_JSON', 'a search term that is no string');
error_is([fed_post($PR, '{"filter":{"generic_search_term":"a\u0000b"}}')],
         400, 'M_INVALID_PARAM', 'a search term with a NUL');

# room_types
# (an empty list is no filter, as in Synapse)
for my $t ([['m.space'], 0], [[undef], 26], [[undef, 'm.space'], 26],
           [[], 26])
{
    ($status, $body) = fed_post($PR, { filter => { room_types => $t->[0] } });
    is $status, 200, 'room_types ' . encode_json($t->[0]);
    is scalar @{ $body->{chunk} }, $t->[1],
       'room_types ' . encode_json($t->[0]) . ": $t->[1] rooms";
    check_shape($body, 'room_types');
}
error_is([fed_post($PR, { filter => { room_types => [1] } })], 400,
         'M_BAD_JSON', 'room_types [1]');
error_is([fed_post($PR, { filter => { room_types => 'm.space' } })], 400,
         'M_BAD_JSON', 'room_types a string');
error_is([fed_post($PR, { filter => [] })], 400, 'M_BAD_JSON',
         'a filter that is no object');

# networks: none but the default one
($status, $body) = fed_get("$PR?third_party_instance_id=irc");
is_deeply [$status, $body->{chunk}], [200, []],
    'a third-party network: no rooms';
($status, $body) = fed_get("$PR?include_all_networks=true");
is scalar @{ $body->{chunk} }, 26, 'include_all_networks: all rooms';
error_is([fed_get("$PR?include_all_networks=true&third_party_instance_id=x")],
         400, 'M_INVALID_PARAM', 'all networks and one network');
error_is([fed_get("$PR?include_all_networks=yes")], 400, 'M_INVALID_PARAM',
         'include_all_networks=yes');
error_is([fed_post($PR, { include_all_networks => 'true' })], 400,
         'M_BAD_JSON', 'include_all_networks "true"');

error_is([fed_get($PR, unsigned => 1)], 401, 'M_UNAUTHORIZED',
         'GET publicRooms unsigned');
error_is([fed_post($PR, {}, unsigned => 1)], 401, 'M_UNAUTHORIZED',
         'POST publicRooms unsigned');
error_is([fed_post($PR, '[]')], 400, 'M_BAD_JSON', 'a body that is no object');

# the silo changes between pages: a room goes private, a room's count
# drops from 6 to 0 (so it comes again, later: the order is the count's)
{
    my ($st, $one) = fed_get("$PR?limit=13");
    $pg->psql(q{UPDATE chat.rooms SET visibility = 'private' WHERE id = 2;
                DELETE FROM chat.memberships WHERE room_id = 20});
    my ($st2, $two) = fed_get("$PR?limit=100&since=$one->{next_batch}");
    is $st2, 200, 'the next page after the silo changed';
    my %seen;
    $seen{$_}++ for @{ rooms_of($one) }, @{ rooms_of($two) };
    is_deeply [sort keys %seen], [sort map { $ids->{$_} } @PUBLIC],
        'every room listed';
    ok !(grep { $seen{ $ids->{$_} } != 1 } grep { $_ != 20 } @PUBLIC),
       'every room but the one that moved once';
    ok !(grep { $_ eq $ids->{2} } @{ rooms_of($two) }),
       'a room made private is not listed';
    ($st, $one) = fed_get($PR);
    is scalar @{ $one->{chunk} }, 25, 'now 25 public rooms';
    my @counts = map { $_->{num_joined_members} } @{ $one->{chunk} };
    is_deeply \@counts, [sort { $b <=> $a } @counts],
        'still by member count';
    $pg->psql(q{UPDATE chat.rooms SET visibility = 'public' WHERE id = 2});
}

# a silo without member_count: NULL, the module counts room_members
$pg->psql(q{CREATE OR REPLACE VIEW matrix_silo.rooms AS
    SELECT r.id::text AS room_id,
           CASE WHEN r.visibility = 'public' THEN r.slug END AS alias,
           r.name, r.topic, r.visibility = 'public' AS is_public,
           r.created_at, r.avatar_url, NULL::bigint AS member_count
      FROM chat.rooms r});
($status, $body) = fed_get($PR);
is $status, 200, 'member_count NULL';
($gen) = grep { $_->{room_id} eq $general } @{ $body->{chunk} };
is $gen->{num_joined_members}, 7, 'counted from room_members';
is $body->{chunk}[0]{room_id}, $general, 'and ordered by that count';

is $pg->psql('SELECT count(*) FROM matrix.events'), '0',
   'no events were made';

$ngx->stop;
my $log = $ngx->error_log;
unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
unlike $log, qr/\[error\]/, 'no statement failed';

# Room version 12 names a room by its create event's hash: the directory
# could not name a room before making it, so matrix_room_version refuses
# 12 (t/030-config-errors.t).

done_testing;
