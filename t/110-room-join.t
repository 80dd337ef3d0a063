# A remote homeserver joins a silo room over federation: make_join,
# send_join (v1 and v2), and the room's events made on first use from
# the reference silo (examples/silo: schema, seed and the operator's
# mapping), against a fake homeserver (python3-signedjson) that signs
# its requests and its events.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 1);
my ($pg, $fake, $ngx, $spec) = ($t->pg, $t->fake, $t->ngx, $t->spec);
my $KEYS = $t->verify_keys;
my $JSON = JSON::PP->new->canonical;

sub fed        { $t->fed(@_) }
sub eventually { $t->eventually(@_) }
sub events_ok  { $t->events_ok(@_) }

my $USER = '@carol:remote.test';

# the walk starts where a user does: #general:module.test
my ($status, $json, $body) = fed('GET',
    '/_matrix/federation/v1/query/directory?room_alias=%23general%3Amodule.test');
is $status, 200, 'query/directory: 200';
$spec->valid_ok('server-server', 'GET', '/_matrix/federation/v1/query/directory',
    $status, $body, 'query/directory matches the spec');
my $ROOM = $json->{room_id};
is $ROOM, '!general:module.test', 'the alias names the room';
is_deeply $json->{servers}, ['module.test'], 'on this server';

($status, $json, $body) = fed('GET',
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
note "events made: $count";

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
is $pg->psql(q{SELECT created_ts IS NULL FROM matrix.matrix_rooms
                WHERE room_id = '!private:module.test'}), 't',
   'and its Matrix room is not made for that';

($status, $json) = fed('GET',
    "/_matrix/federation/v1/make_join/!nope:module.test/$USER?ver=10");
is $status, 404, 'make_join to an unknown room: 404';

my $again = $pg->psql(q{SELECT count(*) FROM matrix.events e
                          JOIN matrix.matrix_rooms r USING (room_nid)
                         WHERE r.room_id = '!general:module.test'});
is $again, $count, 'the room\'s events are made once';

# --- send_join -----------------------------------------------------------------

($status, $json) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=10");
$spec->valid_ok('server-server', 'GET',
    "/_matrix/federation/v1/make_join/$ROOM/$USER", $status, $json,
    'make_join matches the spec');

my $signed = $fake->sign_event('remote.test', '10', $json->{event});
my ($join, $join_id) = ($signed->{event}, $signed->{event_id});

my $SJ2 = "/_matrix/federation/v2/send_join/$ROOM/$join_id";

# refusals first: nothing of these may stay
(my $wrong_id = $SJ2) =~ s/\$[^\/]+$/\$notthisone/;
($status, $json) = fed('PUT', $wrong_id, $join);
is $status, 400, 'send_join under another event ID: 400';

my %message = (%$join, type => 'm.room.message',
               content => { msgtype => 'm.text', body => 'hi' });
delete $message{state_key};
my $msg = $fake->sign_event('remote.test', '10', \%message);
($status, $json) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$msg->{event_id}",
                       $msg->{event});
is $status, 400, 'send_join with a message: 400';

my $forged = $fake->sign_event('remote.test', '10',
    do { my $t = decode_json(encode_json($join)); delete @$t{qw(hashes signatures)}; $t },
    forged => 1);
($status, $json, $body) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$forged->{event_id}",
                       $forged->{event});
is $status, 403, "send_join with a bad signature: 403" or diag encode_json($json);
like $json->{error}, qr/signature/, 'says so';

my %tampered = %$join;
$tampered{content} = { membership => 'join', displayname => 'Mallory' };
($status, $json) = fed('PUT', $SJ2, \%tampered);
is $status, 400, 'send_join whose content no longer matches its hash: 400';

($status, $json, $body) = fed('PUT', $SJ2, $join);
is $status, 200, 'send_join v2: 200' or diag $body;
$spec->valid_ok('server-server', 'PUT', $SJ2, $status, $body,
    'send_join matches the spec');
is $json->{origin}, 'module.test', 'origin';
ok((grep { $_->{type} eq 'm.room.create' } @{ $json->{state} }), 'state has the create event');
ok((grep { $_->{type} eq 'm.room.power_levels' } @{ $json->{state} }), 'and the power levels');
ok(!(grep { ($_->{state_key} // '') eq $USER } @{ $json->{state} }),
   'the state is the one before the join');
cmp_ok scalar @{ $json->{auth_chain} }, '>=', 3, 'an auth chain';
events_ok($json->{state}, 'send_join state');
events_ok($json->{auth_chain}, 'send_join auth chain');

my $members = grep { $_->{type} eq 'm.room.member' } @{ $json->{state} };
cmp_ok $members, '<', 20, "lazy membership: $members members in the state, "
                        . 'not every silo member';

my $stored = $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id = '$join_id'});
is $stored, 1, 'the join is stored';

my $MEMBER = q{SELECT count(*) FROM chat.memberships m JOIN chat.users u
                 ON u.id = m.user_id
                WHERE m.room_id = 1 AND u.matrix_user_id = '@carol:remote.test'};
is eventually($MEMBER, 1), 1, 'the silo has carol as a member of General'
    or diag join "\n", grep { /silo|outbox/ } split /\n/, $ngx->error_log;
is eventually('SELECT count(*) FROM matrix.silo_outbox', 0), 0,
   'and the outbox is empty again';

my $silo_members = $pg->psql(q{SELECT member_count FROM matrix_silo.rooms WHERE room_id = '1'});
($status, $json) = fed('GET', '/_matrix/federation/v1/publicRooms');
my ($listed) = grep { $_->{room_id} eq $ROOM } @{ $json->{chunk} || [] };
is $listed && $listed->{num_joined_members}, $silo_members + 1,
   "publicRooms counts the silo's $silo_members members and carol";

($status, $json, $body) = fed('PUT', "/_matrix/federation/v1/send_join/$ROOM/$join_id", $join);
is $status, 200, 'send_join v1 with the same event: 200 (a join again)';
is ref $json, 'ARRAY', 'v1: [200, {...}]';
is $json->[0], 200, 'v1: the status inside';

# --- the room, as a joined server reads it ------------------------------------

my $head = $pg->psql(qq{SELECT event_id FROM matrix.events e JOIN matrix.matrix_rooms r
                         USING (room_nid) WHERE r.room_id = '$ROOM' ORDER BY nid DESC LIMIT 1});

($status, $json, $body) = fed('GET', "/_matrix/federation/v1/state_ids/$ROOM?event_id=$head");
is $status, 200, 'state_ids: 200';
$spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/state_ids/$ROOM",
    $status, $body, 'state_ids matches the spec');
ok((grep { $_ eq $join_id } @{ $json->{pdu_ids} }) || $head eq $join_id,
   'the join is in the state (or is the head)');

($status, $json, $body) = fed('GET', "/_matrix/federation/v1/state/$ROOM?event_id=$head");
is $status, 200, 'state: 200';
$spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/state/$ROOM",
    $status, $body, 'state matches the spec');
events_ok($json->{pdus}, 'state');

($status, $json) = fed('GET', "/_matrix/federation/v1/state/$ROOM");
is $status, 400, 'state without event_id: 400';
is $json->{errcode}, 'M_MISSING_PARAM', 'M_MISSING_PARAM';

# backfill to the first event of the room
my @all;
my @from = ($head);
for (1 .. 20) {
    my $q = join '&', (map { "v=" . uri_escape($_) } @from), 'limit=100';
    ($status, $json, $body) = fed('GET', "/_matrix/federation/v1/backfill/$ROOM?$q");
    last unless $status == 200 && @{ $json->{pdus} };
    $spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/backfill/$ROOM",
        $status, $body, 'backfill matches the spec') if @all == 0;
    push @all, @{ $json->{pdus} };
    last if grep { $_->{type} eq 'm.room.create' } @{ $json->{pdus} };
    @from = @{ $json->{pdus}[-1]{prev_events} };
}
ok((grep { $_->{type} eq 'm.room.create' } @all), 'backfill reaches the create event');
my @texts = grep { $_->{type} eq 'm.room.message' } @all;
cmp_ok scalar @texts, '>=', 250, 'with the silo\'s history: ' . scalar(@texts) . ' messages';
events_ok(\@all, 'backfilled');

my $first = $pg->psql(q{SELECT source FROM chat.messages WHERE room_id = 1 AND deleted_at IS NULL
                         ORDER BY created_at, id LIMIT 1});
is $texts[-1]{content}{body}, $first, 'the oldest message is the silo\'s first';

($status, $json) = fed('GET', "/_matrix/federation/v1/backfill/$ROOM?v=%24nope&limit=10");
is $status, 200, 'backfill from an event not of the room: 200';
is_deeply $json->{pdus}, [], 'and nothing';

($status, $json) = fed('GET', "/_matrix/federation/v1/backfill/$ROOM?limit=10");
is $status, 400, 'backfill without v: 400';
is $json->{errcode}, 'M_MISSING_PARAM', 'M_MISSING_PARAM';

# get_missing_events
my $create_id = $pg->psql(qq{SELECT event_id FROM matrix.events e JOIN matrix.matrix_rooms r
                              USING (room_nid) WHERE r.room_id = '$ROOM' AND type = 'm.room.create'});
my $gme = { earliest_events => [$create_id], latest_events => [$join_id], limit => 5 };
($status, $json, $body) = fed('POST', "/_matrix/federation/v1/get_missing_events/$ROOM", $gme);
is $status, 200, 'get_missing_events: 200';
$spec->valid_ok('server-server', 'POST', "/_matrix/federation/v1/get_missing_events/$ROOM",
    $status, $body, 'get_missing_events matches the spec');
is scalar @{ $json->{events} }, 5, 'as many as asked';
events_ok($json->{events}, 'missing events');

# one event, and its auth chain
my $one = uri_escape($join_id);
($status, $json, $body) = fed('GET', "/_matrix/federation/v1/event/$one");
is $status, 200, 'event: 200';
$spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/event/$one",
    $status, $body, 'event matches the spec');
is scalar @{ $json->{pdus} }, 1, 'one PDU';
events_ok($json->{pdus}, 'event', [$join_id]);

($status, $json, $body) = fed('GET', "/_matrix/federation/v1/event_auth/$ROOM/$one");
is $status, 200, 'event_auth: 200';
$spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/event_auth/$ROOM/$one",
    $status, $body, 'event_auth matches the spec');
events_ok($json->{auth_chain}, 'event_auth');

($status) = fed('GET', "/_matrix/federation/v1/event/%24nosuchevent");
is $status, 404, 'an unknown event: 404';

# --- leave ---------------------------------------------------------------------

($status, $json, $body) = fed('GET', "/_matrix/federation/v1/make_leave/$ROOM/$USER");
is $status, 200, 'make_leave: 200' or diag $body;
$spec->valid_ok('server-server', 'GET', "/_matrix/federation/v1/make_leave/$ROOM/$USER",
    $status, $body, 'make_leave matches the spec');
my $leave = $fake->sign_event('remote.test', '10', $json->{event});
($status, $json, $body) = fed('PUT', "/_matrix/federation/v2/send_leave/$ROOM/$leave->{event_id}",
                              $leave->{event});
is $status, 200, 'send_leave v2: 200' or diag $body;
is $body, '{}', 'answers {}';
is eventually($MEMBER, 0), 0, 'the silo no longer has carol in General';

($status) = fed('GET', "/_matrix/federation/v1/state_ids/$ROOM?event_id=$head");
is $status, 403, 'a server with nobody in the room may not read it';

# the silo down: the join waits in the outbox, and arrives when it is back
$t->silo_stop;
($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=10");
my $rejoin = $fake->sign_event('remote.test', '10', $json->{event});
($status) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$rejoin->{event_id}",
                $rejoin->{event});
is $status, 200, 'a join while the silo is down: 200 all the same';
sleep 1.5;
is $pg->psql('SELECT count(*) FROM matrix.silo_outbox'), 1, 'it waits in the outbox';
like $pg->psql('SELECT last_error FROM matrix.silo_outbox'), qr/\S/, 'with the last error';
$pg->psql('UPDATE matrix.silo_outbox SET next_attempt_ts = 0');
$t->silo_start;
is eventually($MEMBER, 1), 1, 'delivered once the silo is back';
is eventually('SELECT count(*) FROM matrix.silo_outbox', 0), 0, 'outbox empty';


# --- invite v2: a silo user invited to a room of remote.test ------------------

my $REMOTE_ROOM = '!elsewhere:remote.test';
my $inv_event = $fake->sign_event('remote.test', '10', {
    type => 'm.room.member', state_key => '@alice:module.test',
    sender => '@carol:remote.test', room_id => $REMOTE_ROOM, origin => 'remote.test',
    content => { membership => 'invite' }, depth => 5,
    origin_server_ts => 1700000000000, prev_events => ['$p'], auth_events => ['$a'],
});
my $INV = "/_matrix/federation/v2/invite/$REMOTE_ROOM/$inv_event->{event_id}";
my $invite = { event => $inv_event->{event}, room_version => '10',
               invite_room_state => [{ type => 'm.room.name', state_key => '',
                                       sender => '@carol:remote.test',
                                       content => { name => 'Elsewhere' } }] };

($status, $json, $body) = fed('PUT', $INV, { %$invite, room_version => '2' });
is $status, 400, 'invite in a room version not supported: 400';
is $json->{errcode}, 'M_INCOMPATIBLE_ROOM_VERSION', 'M_INCOMPATIBLE_ROOM_VERSION';

my $stripped = decode_json(encode_json($inv_event->{event}));
delete $stripped->{signatures};
($status) = fed("PUT", $INV, { %$invite, event => $stripped });
is $status, 403, 'an invite without its signature: 403';

($status, $json, $body) = fed('PUT', $INV, $invite);
is $status, 200, 'invite v2: 200' or diag $body;
$spec->valid_ok('server-server', 'PUT', $INV, $status, $body, 'invite matches the spec');
is $json->{event}{state_key}, '@alice:module.test', 'the same event back';
ok $json->{event}{signatures}{'module.test'}, 'signed by this server';
my $c = $fake->check_event('10', $json->{event}, $KEYS);
ok $c->{signatures_ok} && $c->{hash_ok} && $c->{event_id} eq $inv_event->{event_id},
   'both signatures check out, same event ID' or diag encode_json($c);

is eventually(q{SELECT inviter || ' ' || matrix_room_id || ' ' || room_name
                  FROM chat.matrix_invites i JOIN chat.users u ON u.id = i.user_id
                 WHERE u.username = 'alice'},
              '@carol:remote.test !elsewhere:remote.test Elsewhere'),
   '@carol:remote.test !elsewhere:remote.test Elsewhere',
   'the silo has the invite for alice';

my $planted = decode_json(encode_json($inv_event->{event}));
$planted->{signatures}{'module.test'} = { 'ed25519:old' => 'AAAA' };
($status, $json) = fed('PUT', $INV, { %$invite, event => $planted });
is $status, 200, 'an invite with a signature planted under our name: 200';
is_deeply [keys %{ $json->{event}{signatures}{'module.test'} }], ['ed25519:1'],
    'only our real signature is under our name';

($status) = fed('PUT', $INV, $invite);
is $status, 200, 'the same invite again: 200';
is $pg->psql('SELECT count(*) FROM matrix.invites'), 1, 'kept once';

my $nobody = $fake->sign_event('remote.test', '10', {
    %{ $inv_event->{event} }, state_key => '@nobody:module.test' });
delete $nobody->{event}{$_} for ();
($status) = fed('PUT', "/_matrix/federation/v2/invite/$REMOTE_ROOM/$nobody->{event_id}",
                { %$invite, event => $nobody->{event} });
is $status, 404, 'an invite for a user the silo does not have: 404';

# --- events that name what they should not -------------------------------------

my $RANDOM = '!random:module.test';

# six servers' users at once into a room not made yet: one makes it, the
# others of the worker wait for it (not on its row lock, with a
# connection each), and all get a template on the same room
my @socks = map {
    my $uri = "/_matrix/federation/v1/make_join/$RANDOM/\@u$_:remote.test?ver=10";
    $ngx->send_request('GET', $uri, undef,
        Authorization => $fake->x_matrix('remote.test', method => 'GET', uri => $uri,
                                         destination => 'module.test'))
} 1 .. 6;
my @tpls = map { my ($st, $h, $b) = $ngx->read_response($_); [$st, eval { decode_json($b) }] } @socks;
is scalar(grep { $_->[0] == 200 } @tpls), 6, 'six make_joins at once into a new room: all 200';
is scalar(keys %{{ map { ($_->[1]{event}{prev_events}[0] // '') => 1 } @tpls }}), 1,
   'all on the same head';
is $pg->psql(q{SELECT count(*) FROM matrix.events e JOIN matrix.matrix_rooms r
                USING (room_nid) WHERE r.room_id = '!random:module.test'
                  AND e.type = 'm.room.create'}), 1, 'the room was made once';

($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$RANDOM/\@erin:remote.test?ver=10");
is $status, 200, 'make_join into a second room';
my $random_tpl = $json->{event};

($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/\@erin:remote.test?ver=10");
my $gen_tpl = $json->{event};

sub send_join_of {
    my ($tpl, %change) = @_;
    my $ev = decode_json(encode_json($tpl));
    @$ev{keys %change} = values %change;
    my $signed = $fake->sign_event('remote.test', '10', $ev);
    return fed('PUT', "/_matrix/federation/v2/send_join/$ev->{room_id}/$signed->{event_id}",
               $signed->{event});
}

($status, $json, $body) = send_join_of($gen_tpl, prev_events => $random_tpl->{prev_events});
is $status, 400, 'a join naming another room\'s event as its previous: 400' or diag $body;

($status, $json, $body) = send_join_of($gen_tpl, auth_events => $random_tpl->{auth_events});
is $status, 403, 'a join citing another room\'s auth events: 403' or diag $body;

($status, $json, $body) = send_join_of($gen_tpl, depth => 9007199254740991);
is $status, 400, 'a join with an absurd depth: 400' or diag $body;

($status, $json, $body) = send_join_of($gen_tpl, auth_events => [$gen_tpl->{auth_events}[0]]);
is $status, 403, 'a join citing only the create event (no join rules: invite-only): 403'
    or diag $body;

($status, $json, $body) = send_join_of($gen_tpl, prev_events => [('$x') x 21]);
is $status, 400, 'a join with 21 prev_events: 400';

($status, $json, $body) = send_join_of($gen_tpl, prev_events => []);
is $status, 400, 'a join with no prev_events: 400';

($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/\@erin:remote.test?ver=10");
is $json->{event}{depth}, $gen_tpl->{depth}, 'none of those changed the room';

# carol is back in General (the silo-down case): she may read it, but an
# event of the second room gives nothing from the first
my $other = uri_escape($random_tpl->{prev_events}[0]);
($status, $json) = fed('GET', "/_matrix/federation/v1/backfill/$ROOM?v=$other&limit=10");
is $status, 200, 'backfill from an event of another room: 200';
is_deeply $json->{pdus}, [], 'and nothing';

($status) = fed('GET', "/_matrix/federation/v1/backfill/$ROOM?v=%00&limit=5");
is $status, 400, 'backfill from "\\0": 400';

($status) = fed('POST', "/_matrix/federation/v1/get_missing_events/$ROOM",
                { earliest_events => ["\$a\x{0}b"], latest_events => [] });
is $status, 400, 'get_missing_events with a NUL in an event ID: 400';

# --- bans and server ACLs, set in the room as its moderators would -----------

my $room_nid = $pg->psql(qq{SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$RANDOM'});

sub put_state {
    my ($id, $type, $key, $content, $membership) = @_;
    my $pdu = encode_json({ type => $type, state_key => $key, room_id => $RANDOM,
                            sender => '@_matrix:module.test', content => $content,
                            depth => 1, origin_server_ts => 1, prev_events => [],
                            auth_events => [], hashes => { sha256 => 'x' },
                            signatures => {} });
    my $rec = encode_json([{ event_id => $id, type => $type, state_key => $key,
                             sender => '@_matrix:module.test', depth => 1, ts => 1,
                             prev => [], auth => [], pdu => $pdu,
                             $membership ? (membership => $membership) : () }]);
    $rec =~ s/'/''/g;
    $pg->psql("SET search_path = matrix, matrix_silo; SELECT matrix_append_events($room_nid, '$rec'::jsonb)");
}

put_state('$ban', 'm.room.member', '@banned:remote.test', { membership => 'ban' }, 'ban');
($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$RANDOM/\@banned:remote.test?ver=10");
is $status, 403, 'make_join of a banned user: 403';
like $json->{error}, qr/banned/, 'says so';

put_state('$acl', 'm.room.server_acl', '', { allow => ['*'], deny => ['remote.test'],
                                               allow_ip_literals => JSON::PP::false });
($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$RANDOM/\@frank:remote.test?ver=10");
is $status, 403, 'make_join from a server the room\'s ACL denies: 403';
like $json->{error}, qr/ACL/, 'says so';

unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;

sub uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;
    return $s;
}
