# Silo users' reactions, out to Matrix: the reactions trigger of the
# reference silo (examples/silo/matrix.sql) feeds the change feed; an
# added reaction reaches remote.test as a signed m.reaction annotating
# the message's event (after the user's join, if needed), a removed one
# as its redaction.  A reaction the module wrote for a Matrix user is not
# sent back, one to a message no event mirrors is given up on, and a silo
# without the reactions view and trigger goes on as before.

use strict;
use warnings;
use utf8;

use Test::More;
use JSON::PP;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 2);
my ($pg, $fake, $spec) = ($t->pg, $t->fake, $t->spec);
my $KEYS = $t->verify_keys;
my $ROOM = '!general:module.test';

sub eventually { $t->eventually(@_) }
sub events_ok  { $t->events_ok(@_) }

# inbound reactions reach the silo as reactions (chat.reactions.event_id)
my $ngx = $t->restart_nginx(workers => 2, http => "    matrix_silo_supports reactions;\n");

$fake->configure_global({ keys => $KEYS });

my $CAROL = '@carol:remote.test';
my $CAROL_JOIN = $t->remote_join($CAROL, $ROOM);
ok $CAROL_JOIN, 'carol of remote.test joined';

sub sent_pdus { $t->sent_pdus }
sub wait_pdus { $t->wait_pdus(@_) }
sub event_id_of { $fake->check_event('10', $_[0], $KEYS)->{event_id} }

# a silo user joined on Matrix
my ($uid, $handle, $username) = split /\|/, $pg->psql(qq{SELECT u.id, u.handle, u.username
    FROM chat.users u
    JOIN matrix.room_state s ON s.state_key = '\@' || u.handle || ':module.test'
    JOIN matrix.matrix_rooms r ON r.room_nid = s.room_nid
   WHERE r.room_id = '$ROOM' AND s.membership = 'join' AND u.deactivated_at IS NULL
   ORDER BY u.id LIMIT 1});
ok $uid, "a silo user joined on Matrix: $username";
my $MXID = "\@$handle:module.test";
sub call { $t->silo_call(@_) }
sub login {
    my ($name) = @_;
    my ($st, $j) = call('POST', '/login', { username => $name, password => "$name-password" });
    return $j->{token};
}
my $token = login($username);
ok $token, 'logged in to the silo';

# a new silo user: not joined on Matrix yet
my ($lname, $lhandle) = ('zed', 'zed');
my ($st, $j) = call('POST', '/signup', { username => $lname, password => "$lname-password" });
my $lurker = $j->{user_id};
my $ltoken = login($lname);
ok $lurker && $ltoken, 'a new silo user signed up and logged in';

sub post_and_wait {
    my ($text) = @_;
    my $mid = $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source)
                           VALUES (1, $uid, '$text') RETURNING id});
    my $eid;
    for (1 .. 150) {
        $eid = $pg->psql(qq{SELECT event_id FROM matrix.events
                             WHERE silo_message_id = '$mid' AND recipe IS NOT NULL});
        last if $eid;
        sleep 0.1;
    }
    return ($mid, $eid);
}

my ($mid, $mev) = post_and_wait('react to me');
ok $mev, 'a silo message has its event';

# --- a reaction of a joined silo user --------------------------------------------

$fake->reset;
my $KEY = "\x{1F44D}";
($st, $j) = call('POST', "/messages/$mid/reactions", { key => $KEY }, $token);
is $st, 200, 'the silo user reacts (user API)';
my $rid = $j->{reaction_id};
my ($r1) = wait_pdus(sub { $_[0]{type} eq 'm.reaction' });
ok $r1, 'remote.test receives an m.reaction';
is $r1 && $r1->{sender}, $MXID, 'by the user\'s Matrix ID';
is $r1 && $r1->{room_id}, $ROOM, 'in the room';
is_deeply $r1 && $r1->{content},
          { 'm.relates_to' => { rel_type => 'm.annotation', event_id => $mev, key => $KEY } },
          'annotating the message\'s event with the key';
events_ok([$r1 || {}], 'the m.reaction');
my $r1_id = $r1 ? event_id_of($r1) : '';
is $pg->psql(qq{SELECT e.event_id FROM matrix.silo_reactions s
                  JOIN matrix.events e ON e.nid = s.event_nid
                 WHERE s.silo_reaction_id = '$rid'}), $r1_id,
   'the silo reaction finds its event (matrix.silo_reactions)';
my @txns = $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
ok @txns && !(grep { !$_->{verified} } @txns), 'in signed transactions';

($st, $j) = call('POST', "/messages/$mid/reactions", { key => $KEY }, $token);
is "$st $j->{reaction_id}", "200 $rid", 'the same key again: the same reaction';

# --- a reaction of a silo user not joined on Matrix: the join first ---------------

$fake->reset;
($st) = call('POST', "/messages/$mid/reactions", { key => 'ok' }, $ltoken);
is $st, 200, 'a silo user not joined on Matrix reacts';
my ($r2) = wait_pdus(sub { $_[0]{type} eq 'm.reaction' });
my @p = sent_pdus();
my ($i_join) = grep { $p[$_]{type} eq 'm.room.member'
                      && $p[$_]{state_key} eq "\@$lhandle:module.test" } 0 .. $#p;
my ($i_re) = grep { $p[$_]{type} eq 'm.reaction' } 0 .. $#p;
ok defined $i_join && defined $i_re && $i_join < $i_re, 'their join, then the reaction';
is $r2 && $r2->{content}{'m.relates_to'}{key}, 'ok', 'with its key';
ok $r2 && grep({ $_ eq event_id_of($p[$i_join]) } @{ $r2->{auth_events} }),
   'authorised by that join';
events_ok(\@p, 'the join and the reaction');

# --- removed: a redaction of the m.reaction ------------------------------------------

$fake->reset;
($st) = call('DELETE', "/messages/$mid/reactions", { key => $KEY }, $token);
is $st, 200, 'the silo user takes the reaction back';
my ($red) = wait_pdus(sub { $_[0]{type} eq 'm.room.redaction' });
ok $red, 'remote.test receives a redaction';
is $red && $red->{redacts}, $r1_id, 'of the m.reaction';
is $red && $red->{sender}, $MXID, 'by its sender';
events_ok([$red || {}], 'the redaction');
is $pg->psql(qq{SELECT r.event_id FROM matrix.events e JOIN matrix.events r ON r.nid = e.redacted_by
                 WHERE e.event_id = '$r1_id'}), $red ? event_id_of($red) : '',
   'the m.reaction is marked redacted by it';
($st) = call('DELETE', "/messages/$mid/reactions", { key => $KEY }, $token);
is $st, 404, 'taken back twice: 404';

# a reaction deleted for good is redacted as well
$fake->reset;
my $lrid = $pg->psql(qq{SELECT id FROM chat.reactions WHERE user_id = $lurker AND key = 'ok'});
my $r2_id = $r2 ? event_id_of($r2) : '';
$pg->psql("DELETE FROM chat.reactions WHERE id = $lrid");
($red) = wait_pdus(sub { $_[0]{type} eq 'm.room.redaction' });
is $red && $red->{redacts}, $r2_id, 'a reaction row deleted: its m.reaction redacted';

# --- a reaction to a Matrix user's message ---------------------------------------

my $create = $t->state_id($ROOM, 'm.room.create', '');
my $pl = $t->state_id($ROOM, 'm.room.power_levels', '');
my ($cm, $cm_id) = $t->event(room_id => $ROOM, sender => $CAROL,
    content => { msgtype => 'm.text', body => 'carol speaks' },
    auth => [$create, $pl, $CAROL_JOIN]);
(undef, $j) = $t->send_txn([$cm]);
is_deeply $j, { pdus => { $cm_id => {} } }, 'carol\'s message accepted';
my $cmid = eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$cm_id'}, 1)
    && $pg->psql(qq{SELECT id FROM chat.messages WHERE matrix_event_id = '$cm_id'});
ok $cmid, 'and written to the silo';
$fake->reset;
($st) = call('POST', "/messages/$cmid/reactions", { key => 'thanks' }, $token);
my ($r3) = wait_pdus(sub { $_[0]{type} eq 'm.reaction' });
is $r3 && $r3->{content}{'m.relates_to'}{event_id}, $cm_id,
   'a reaction to carol\'s message annotates her event';

# --- a Matrix user's reaction, written by the module: not sent back ---------------

my ($cr, $cr_id) = $t->event(room_id => $ROOM, sender => $CAROL, type => 'm.reaction',
    content => { 'm.relates_to' => { rel_type => 'm.annotation', event_id => $mev,
                                     key => 'from carol' } },
    auth => [$create, $pl, $CAROL_JOIN]);
$fake->reset;
(undef, $j) = $t->send_txn([$cr]);
is_deeply $j, { pdus => { $cr_id => {} } }, 'carol\'s reaction accepted';
is eventually(qq{SELECT count(*) FROM chat.reactions WHERE event_id = '$cr_id'}, 1), 1,
   'and written to the silo as a reaction';
is eventually(q{SELECT count(*) FROM matrix.silo_changes}, 0), 0,
   'its change is consumed, not given up on';
# a silo reaction after it: once it is out, carol's would have been
($st) = call('POST', "/messages/$mid/reactions", { key => 'after' }, $token);
wait_pdus(sub { ($_[0]{content}{'m.relates_to'}{key} // '') eq 'after' });
is scalar(grep { $_->{type} eq 'm.reaction' && $_->{sender} eq $CAROL } sent_pdus()), 0,
   'carol\'s reaction is not sent back';
is $pg->psql(qq{SELECT count(*) FROM matrix.silo_reactions s JOIN chat.reactions r
                 ON r.id::text = s.silo_reaction_id WHERE r.event_id IS NOT NULL}), 0,
   'nor recorded as a silo reaction sent';

# --- a reaction to a message no event mirrors: given up on -----------------------

$pg->psql('ALTER TABLE chat.messages DISABLE TRIGGER matrix_feed');
my $hidden = $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source)
                          VALUES (1, $uid, 'unseen') RETURNING id});
$pg->psql('ALTER TABLE chat.messages ENABLE TRIGGER matrix_feed');
($st, $j) = call('POST', "/messages/$hidden/reactions", { key => 'lost' }, $token);
is eventually(qq{SELECT last_error FROM matrix.silo_changes
                  WHERE reaction_id = '$j->{reaction_id}' AND failed_at IS NOT NULL},
              'no event mirrors the message it reacts to'),
   'no event mirrors the message it reacts to',
   'a reaction to a message without an event is given up on, with the reason';
like $ngx->error_log, qr/matrix feed: change \d+ of room "\Q$ROOM\E" makes no event, given up on: no event mirrors/,
     'and logged';
$pg->psql('DELETE FROM matrix.silo_changes WHERE failed_at IS NOT NULL');

# --- a silo without the reactions view and trigger ---------------------------------

$pg->psql('DROP TRIGGER matrix_feed ON chat.reactions; DROP VIEW matrix_silo.reactions');
$fake->reset;
($st) = call('POST', "/messages/$mid/reactions", { key => 'unseen' }, $token);
is $st, 200, 'without them, the silo\'s reactions work';
my ($mid2, $mev2) = post_and_wait('still flowing');
ok $mev2, 'messages still become events';
wait_pdus(sub { ($_[0]{content}{body} // '') eq 'still flowing' });
is scalar(grep { $_->{type} eq 'm.reaction' } sent_pdus()), 0, 'no reaction is sent';
is $pg->psql('SELECT count(*) FROM matrix.silo_changes'), 0, 'and no change is left';

unlike $ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no crash, no alert';

done_testing;
