# Typing notices and read receipts of silo users, out as EDUs: the silo
# says NOTIFY matrix_silo_ephemeral (docs/silo-contract.md, "Typing and
# read receipts"), through the reference silo's user API or by hand; the
# owner of the sending lock turns each into an m.typing / m.receipt EDU
# for the other servers in the room, once, with or without PDUs.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use HTTP::Tiny;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 2);
my ($pg, $fake, $ngx, $spec) = ($t->pg, $t->fake, $t->ngx, $t->spec);
my $KEYS = $t->verify_keys;
my $JSON = JSON::PP->new->canonical;
my $ROOM = '!general:module.test';

sub fed { $t->fed(@_) }

$fake->configure_global({ keys => $KEYS });

my ($status, $json, $body) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/\@carol:remote.test?ver=10");
my $signed = $fake->sign_event('remote.test', '10', $json->{event});
my $CAROL_JOIN = $signed->{event_id};
($status, $json, $body) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$CAROL_JOIN",
                              $signed->{event});
is $status, 200, 'carol of remote.test joined' or diag $body;

# a silo user joined on Matrix (an author of the history), and their login
my ($uid, $handle, $username) = split /\|/, $pg->psql(qq{SELECT u.id, u.handle, u.username
    FROM chat.users u
    JOIN matrix.room_state s ON s.state_key = '\@' || u.handle || ':module.test'
    JOIN matrix.matrix_rooms r ON r.room_nid = s.room_nid
   WHERE r.room_id = '$ROOM' AND s.membership = 'join' AND u.deactivated_at IS NULL
   ORDER BY u.id LIMIT 1});
ok $uid, "a silo user joined on Matrix: $username";
my $MXID = "\@$handle:module.test";

my $http = HTTP::Tiny->new(timeout => 10);
my $api = "http://127.0.0.1:$t->{silo_port}/api";
sub call {
    my ($path, $body, $token) = @_;
    my $r = $http->post("$api$path", { content => encode_json($body),
        headers => { 'Content-Type' => 'application/json',
                     $token ? (Authorization => "Bearer $token") : () } });
    return ($r->{status}, eval { decode_json($r->{content}) });
}
my ($st, $j) = call('/login', { username => $username, password => "$username-password" });
is $st, 200, 'logged in to the silo';
my $token = $j->{token};

# the EDUs remote.test received, in order
sub edus {
    return map { @{ $_->{json}{edus} || [] } }
           grep { ($_->{status} // 0) == 200 }
           $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
}
sub wait_edus {
    my ($cond, $secs) = @_;
    my @e;
    for (1 .. ($secs // 10) * 10) {
        @e = grep { $cond->($_) } edus();
        return @e if @e;
        sleep 0.1;
    }
    return @e;
}
sub notify {
    my ($notice) = @_;
    my $p = $JSON->encode($notice) =~ s/'/''/gr;
    $pg->psql("SELECT pg_notify('matrix_silo_ephemeral', '$p')");
}

# --- typing, through the silo's user API -------------------------------------------

$fake->reset;
($st) = call('/rooms/1/typing', { typing => JSON::PP::true }, $token);
is $st, 200, 'the silo user types (user API)';
my @typing = wait_edus(sub { $_[0]{edu_type} eq 'm.typing' });
is scalar @typing, 1, 'remote.test gets one m.typing EDU (two workers, one sender)';
is_deeply $typing[0] && $typing[0]{content},
          { room_id => $ROOM, user_id => $MXID, typing => JSON::PP::true },
          'for the Matrix room and the user\'s Matrix ID';
my ($txn) = grep { @{ $_->{json}{edus} || [] } }
            $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
ok $txn && $txn->{verified}, 'in a signed transaction';
is_deeply $txn && $txn->{json}{pdus}, [], 'of EDUs alone';

($st) = call('/rooms/1/typing', { typing => JSON::PP::false }, $token);
my @stop = wait_edus(sub { $_[0]{edu_type} eq 'm.typing' && !$_[0]{content}{typing} });
is scalar @stop, 1, 'and when they stop';

# --- a read receipt for a silo message ------------------------------------------------

my $mid = $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source)
                       VALUES (1, $uid, 'read me') RETURNING id});
my $event_id;
for (1 .. 100) {
    $event_id = $pg->psql(qq{SELECT event_id FROM matrix.events
                              WHERE silo_message_id = '$mid' AND recipe IS NOT NULL});
    last if $event_id;
    sleep 0.1;
}
ok $event_id, 'the message has its event';
$fake->reset;
($st) = call('/rooms/1/read', { message_id => "$mid" }, $token);
is $st, 200, 'the silo user reads it (user API)';
my @r = wait_edus(sub { $_[0]{edu_type} eq 'm.receipt' });
is scalar @r, 1, 'remote.test gets an m.receipt EDU';
my $rc = $r[0] ? $r[0]{content}{$ROOM}{'m.read'}{$MXID} : {};
is_deeply $rc->{event_ids}, [$event_id], 'naming the message\'s event';
like $rc->{data}{ts} // '', qr/^\d{13}$/, 'with a timestamp';

# --- a read receipt for a Matrix user's message ----------------------------------

my $RNID = $pg->psql("SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$ROOM'");
my ($create, $pl) = map { scalar $pg->psql(qq{SELECT e.event_id FROM matrix.room_state s
    JOIN matrix.events e ON e.nid = s.event_nid
   WHERE s.room_nid = $RNID AND s.type = '$_' AND s.state_key = ''}) }
   'm.room.create', 'm.room.power_levels';
my $h = decode_json(scalar $pg->psql(qq{SELECT jsonb_build_object(
    'prev', jsonb_agg(e.event_id ORDER BY e.nid), 'depth', max(e.depth) + 1)
      FROM matrix.forward_extremities f JOIN matrix.events e ON e.nid = f.event_nid
     WHERE f.room_nid = $RNID}));
my $m = $fake->sign_event('remote.test', '10', {
    type => 'm.room.message', room_id => $ROOM, sender => '@carol:remote.test',
    origin => 'remote.test', origin_server_ts => int(Time::HiRes::time() * 1000),
    depth => $h->{depth}, prev_events => $h->{prev},
    auth_events => [$create, $pl, $CAROL_JOIN],
    content => { msgtype => 'm.text', body => 'from carol' } });
($status, $json, $body) = fed('PUT', '/_matrix/federation/v1/send/carol1', {
    origin => 'remote.test', origin_server_ts => int(Time::HiRes::time() * 1000),
    pdus => [$m->{event}] });
is_deeply $json, { pdus => { $m->{event_id} => {} } }, 'carol\'s message is accepted';
my $cmid;
for (1 .. 100) {
    $cmid = $pg->psql(qq{SELECT id FROM chat.messages WHERE matrix_event_id = '$m->{event_id}'});
    last if $cmid;
    sleep 0.1;
}
ok $cmid, 'and is in the silo';
$fake->reset;
notify({ type => 'receipt', room_id => '1', user_id => "$uid", message_id => "$cmid",
         ts => 1710000000000 });
@r = wait_edus(sub { $_[0]{edu_type} eq 'm.receipt' });
is_deeply $r[0] && $r[0]{content},
          { $ROOM => { 'm.read' => { $MXID => { event_ids => [$m->{event_id}],
                                                data => { ts => 1710000000000 } } } } },
          'a receipt for carol\'s message names her event';

# --- dropped: nobody to tell, or nothing Matrix knows --------------------------

$fake->reset;
my $lurker = $pg->psql(q{SELECT u.id FROM chat.users u
    WHERE u.matrix_user_id IS NULL AND NOT EXISTS (
          SELECT 1 FROM matrix.room_state s
           WHERE s.state_key = '@' || u.handle || ':module.test')
    ORDER BY u.id LIMIT 1});
notify({ type => 'typing', room_id => '1', user_id => "$lurker", typing => JSON::PP::true });
notify({ type => 'typing', room_id => '3', user_id => "$uid", typing => JSON::PP::true });
notify({ type => 'receipt', room_id => '1', user_id => "$uid", message_id => '999999' });
notify({ type => 'typing', room_id => '1' });
notify({ type => 'dancing', room_id => '1', user_id => "$uid" });
$pg->psql(q{SELECT pg_notify('matrix_silo_ephemeral', 'not json')});
# then one that goes: the ones before it would have gone first
notify({ type => 'typing', room_id => '1', user_id => "$uid", typing => JSON::PP::true });
my @all = wait_edus(sub { 1 });
sleep 1;
@all = edus();
is scalar @all, 1, 'a user not joined on Matrix, a room Matrix has not, a message no event '
                 . 'mirrors, malformed notices: nothing sent';
is $all[0] && $all[0]{content}{user_id}, $MXID, 'but the next good one is';
like $ngx->error_log, qr/matrix ephemeral: a notice on "matrix_silo_ephemeral" is not one the contract knows, ignored: not json/,
     'a malformed notice is logged';

# --- with PDUs: one transaction ----------------------------------------------------

$fake->configure('remote.test', { behaviour => {
    'PUT /_matrix/federation/v1/send/' => { delay_ms => 1500 } } });
$fake->reset;
notify({ type => 'typing', room_id => '1', user_id => "$uid", typing => JSON::PP::true });
sleep 0.5;   # that transaction is in flight: what follows waits for it
$pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source) VALUES (1, $uid, 'and a message')});
sleep 0.5;
notify({ type => 'typing', room_id => '1', user_id => "$uid", typing => JSON::PP::false });
my @both;
for (1 .. 100) {
    @both = grep { @{ $_->{json}{pdus} || [] } && @{ $_->{json}{edus} || [] } }
            $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
    last if @both;
    sleep 0.1;
}
ok scalar @both, 'EDUs waiting go with the next PDUs, in one transaction';
$fake->configure('remote.test', { behaviour => undef });

unlike $ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no crash, no alert';

done_testing;
