# What other servers' users do besides messages, as the reference silo
# (examples/silo) gets it: reactions (PUT reactions/, unreactions/ with
# "matrix_silo_supports reactions", else the fallback: a reply "reacted
# with KEY" that the reaction's redaction deletes), typing notices and
# read receipts (PUT typing, receipts, when declared), mentions; and the
# EDUs that must not reach it: from a server with no user in the room, of
# a user not in it, for a user of another server, from a server the
# room's ACL denies, malformed, or undeclared.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use Encode qw(encode_utf8);

use MatrixRoomTest;

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test', 'other.test', 'third.test'], workers => 1);
my $pg = $t->pg;
my $SUPPORTS = "    matrix_silo_supports reactions typing receipts;\n";
$t->restart_nginx(workers => 1, http => $SUPPORTS);

my $ROOM = '!general:module.test';
my $CAROL = '@carol:remote.test';
my $TRUE = JSON::PP::true;
my ($THUMBS, $PARTY) = ("\x{1F44D}", "\x{1F389}");   # psql gives UTF-8 bytes
my $FALSE = JSON::PP::false;
my ($status, $json, $body);

sub eventually { $t->eventually(@_) }

my $JOIN = $t->remote_join($CAROL, $ROOM);
ok $JOIN, 'carol of remote.test joins General';
is eventually(q{SELECT count(*) FROM chat.memberships m JOIN chat.users u ON u.id = m.user_id
                 WHERE m.room_id = 1 AND u.matrix_user_id = '@carol:remote.test'}, 1), 1,
   'the silo has her in General';
my @AUTH = ($t->state_id($ROOM, 'm.room.create', ''),
            $t->state_id($ROOM, 'm.room.power_levels', ''), $JOIN);

sub carol { return $t->event(room_id => $ROOM, sender => $CAROL, auth => \@AUTH, @_) }

my $OUTBOX = 'SELECT count(*) FROM matrix.silo_outbox';

# carol's message, and a message of the silo's own (its event made by the feed)
my ($m1, $id1) = carol(content => { msgtype => 'm.text', body => 'react to me' });
my ($r_st, $r_json) = $t->send_txn([$m1]);
is_deeply $r_json, { pdus => { $id1 => {} } }, 'a message of carol accepted';
my $SILO1 = eventually(qq{SELECT id FROM chat.messages WHERE matrix_event_id = '$id1'}, '1')
    && $pg->psql(qq{SELECT id FROM chat.messages WHERE matrix_event_id = '$id1'});
ok $SILO1, "the silo has it ($SILO1)";
my ($SILO_EV, $SILO_MID) = split /\|/, $pg->psql(q{SELECT e.event_id || '|' || e.silo_message_id
    FROM matrix.events e JOIN matrix.matrix_rooms r ON r.room_nid = e.room_nid
   WHERE r.room_id = '!general:module.test' AND e.silo_message_id IS NOT NULL
   ORDER BY e.nid DESC LIMIT 1});
ok $SILO_EV, "a silo message's event ($SILO_MID)";

sub react {
    my ($target, $key) = @_;
    return carol(type => 'm.reaction', content => { 'm.relates_to' => {
        rel_type => 'm.annotation', event_id => $target, key => $key } });
}

# --- reactions, declared -----------------------------------------------------------

my ($x1, $xid1) = react($id1, $THUMBS);
my ($x2, $xid2) = react($SILO_EV, 'ok');
($status, $json) = $t->send_txn([$x1, $x2]);
is_deeply $json, { pdus => { $xid1 => {}, $xid2 => {} } }, 'two reactions accepted';
is eventually(qq{SELECT string_agg(message_id || ' ' || key, ',' ORDER BY message_id)
                   FROM chat.reactions WHERE event_id IN ('$xid1', '$xid2')
                    AND removed_at IS NULL},
              encode_utf8("$SILO_MID ok,$SILO1 $THUMBS")),
   encode_utf8("$SILO_MID ok,$SILO1 $THUMBS"), 'the silo has both, on the messages reacted to';
is $pg->psql(qq{SELECT (SELECT matrix_user_id FROM chat.users u WHERE u.id = r.user_id)
                  FROM chat.reactions r WHERE event_id = '$xid1'}), $CAROL, 'by carol';
is $pg->psql(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id IN ('$xid1', '$xid2')}), 0,
   'and no fallback messages';

my ($d1, $did1) = carol(type => 'm.room.redaction', redacts => $xid1, content => {});
($status, $json) = $t->send_txn([$d1]);
is_deeply $json, { pdus => { $did1 => {} } }, 'the redaction of one accepted';
is eventually(qq{SELECT removed_at IS NOT NULL FROM chat.reactions WHERE event_id = '$xid1'}, 't'),
   't', 'the silo removed that reaction';
is $pg->psql(qq{SELECT removed_at IS NULL FROM chat.reactions WHERE event_id = '$xid2'}), 't',
   'and only it';

# a reaction to an event that is no silo message (carol's join): dropped
my ($x3, $xid3) = react($JOIN, 'no');
($status, $json) = $t->send_txn([$x3]);
is_deeply $json, { pdus => { $xid3 => {} } }, 'a reaction to a membership accepted';
is eventually($OUTBOX, 0), 0, 'its write is settled';
is $pg->psql(qq{SELECT count(*) FROM chat.reactions WHERE event_id = '$xid3'})
   + $pg->psql(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$xid3'}), 0,
   'and the silo has nothing of it';

# --- mentions ------------------------------------------------------------------------

my ($m2, $id2) = carol(content => { msgtype => 'm.text', body => 'alice, bob: look',
    'm.mentions' => { user_ids => ['@alice:module.test', '@bob:module.test',
                                   '@nobody:module.test', '@alice:remote.test'] } });
$t->send_txn([$m2]);
is eventually(qq{SELECT string_agg(n.user_id::text, ',' ORDER BY n.user_id)
                   FROM chat.mentions n JOIN chat.messages m ON m.id = n.message_id
                  WHERE m.matrix_event_id = '$id2'}, '1,2'), '1,2',
   'm.mentions: the silo users mentioned, no one else';

# --- typing and receipts, declared ------------------------------------------------

my $TYPING = q{SELECT coalesce((SELECT CASE WHEN t.until > now() THEN 'typing' ELSE 'stopped' END
                 FROM chat.typing t JOIN chat.users u ON u.id = t.user_id
                WHERE t.room_id = 1 AND u.matrix_user_id = '%s'), 'none')};
my $READ = q{SELECT coalesce((SELECT r.message_id::text
                 FROM chat.read_markers r JOIN chat.users u ON u.id = r.user_id
                WHERE r.room_id = 1 AND u.matrix_user_id = '%s'), 'none')};

sub typing_edu {
    my ($user, $typing, $room) = @_;
    return { edu_type => 'm.typing',
             content => { room_id => $room // $ROOM, user_id => $user, typing => $typing } };
}

sub receipt_edu {
    my ($user, $event_id) = @_;
    return { edu_type => 'm.receipt', content => { $ROOM => { 'm.read' => {
        $user => { event_ids => [$event_id], data => { ts => 1710000000000 } } } } } };
}

($status, $json, $body) = $t->send_txn([], edus => [typing_edu($CAROL, $TRUE)]);
is $status, 200, 'a typing notice: 200' or diag $body;
is eventually(sprintf($TYPING, $CAROL), 'typing'), 'typing', 'the silo shows carol typing';
$t->send_txn([], edus => [typing_edu($CAROL, $FALSE)]);
is eventually(sprintf($TYPING, $CAROL), 'stopped'), 'stopped', 'and then not';

$t->send_txn([], edus => [receipt_edu($CAROL, $SILO_EV)]);
is eventually(sprintf($READ, $CAROL), $SILO_MID), $SILO_MID,
   'a read receipt of a silo message: the silo has carol\'s marker on it';
$t->send_txn([], edus => [receipt_edu($CAROL, $JOIN)]);
$t->send_txn([], edus => [typing_edu($CAROL, $TRUE)]);
is eventually(sprintf($TYPING, $CAROL), 'typing'), 'typing', '(a later notice arrived)';
is $pg->psql(sprintf($READ, $CAROL)), $SILO_MID,
   'a receipt of an event that is no silo message changes nothing';

# oscar of other.test joins General as well; third.test has no user in it,
# olivia of other.test is not in it, and remote.test speaks for oscar
my ($OSCAR, $OLIVIA, $TESS) = ('@oscar:other.test', '@olivia:other.test', '@tess:third.test');
ok $t->remote_join($OSCAR, $ROOM), 'oscar of other.test joins General';
my @none;
($status) = $t->send_txn([], edus => [typing_edu($TESS, $TRUE), receipt_edu($TESS, $SILO_EV)],
                         as => 'third.test');
is $status, 200, 'EDUs from a server with no user in the room: 200';
push @none, [$TESS, 'those of a server with no user in the room'];
($status) = $t->send_txn([], edus => [typing_edu($OLIVIA, $TRUE), receipt_edu($OLIVIA, $SILO_EV),
                                      typing_edu($OSCAR, $FALSE)],
                         as => 'other.test');
is $status, 200, 'EDUs of a user not in the room: 200';
push @none, [$OLIVIA, 'those of a user not in the room'];
is eventually(sprintf($TYPING, $OSCAR), 'stopped'), 'stopped',
   '(oscar\'s own, sent with them, arrived)';
($status) = $t->send_txn([], edus => [typing_edu($OSCAR, $TRUE), receipt_edu($OSCAR, $SILO_EV),
                                      typing_edu($CAROL, $FALSE)]);
is $status, 200, 'EDUs of a user of another server: 200';
is eventually(sprintf($TYPING, $CAROL), 'stopped'), 'stopped',
   '(the one of its own user, sent after them, arrived)';
for (@none) {
    my ($user, $what) = @$_;
    is $pg->psql(sprintf($TYPING, $user)) . ' ' . $pg->psql(sprintf($READ, $user)), 'none none',
       "$what did not reach the silo";
}
is $pg->psql(sprintf($TYPING, $OSCAR)) . ' ' . $pg->psql(sprintf($READ, $OSCAR)), 'stopped none',
   'nor those claimed for a user of another server';

# a server ACL that denies other.test: oscar's notices no longer reach the
# silo (the ACL put in the room's state by hand, for these EDUs only)
$pg->psql(q{WITH r AS (SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '!general:module.test'),
                 e AS (INSERT INTO matrix.events (depth, origin_server_ts, room_nid, event_id, type,
                                                  state_key, sender, prev_nids, auth_nids, pdu)
                       SELECT 1, 0, room_nid, '$acl-of-the-test', 'm.room.server_acl', '',
                              '@_matrix:module.test', '{}', '{}',
                              '{"content":{"allow":["*"],"deny":["other.test"]}}' FROM r
                       RETURNING nid, room_nid)
            INSERT INTO matrix.room_state (room_nid, type, state_key, event_nid)
            SELECT room_nid, 'm.room.server_acl', '', nid FROM e});
$t->send_txn([], edus => [typing_edu($OSCAR, $TRUE)], as => 'other.test');
$t->send_txn([], edus => [typing_edu($CAROL, $TRUE)]);
is eventually(sprintf($TYPING, $CAROL), 'typing'), 'typing', '(carol\'s notice after it arrived)';
sleep 0.5;     # two batches: the first one's request may be the later
is $pg->psql(sprintf($TYPING, $OSCAR)), 'stopped', 'a server the ACL denies: its notice did not';
$pg->psql(q{DELETE FROM matrix.room_state WHERE type = 'm.room.server_acl';
            DELETE FROM matrix.events WHERE event_id = '$acl-of-the-test'});
$t->send_txn([], edus => [typing_edu($OSCAR, $TRUE)], as => 'other.test');
is eventually(sprintf($TYPING, $OSCAR), 'typing'), 'typing', 'without the ACL, it does';

# malformed EDUs, with a message: the transaction and the message go through
my ($m3, $id3) = carol(content => { msgtype => 'm.text', body => 'after junk' });
($status, $json, $body) = $t->send_txn([$m3], edus => [
    'not an object', { edu_type => 5 }, { edu_type => 'm.typing', content => [] },
    { edu_type => 'm.typing', content => { room_id => $ROOM, user_id => $CAROL, typing => 'yes' } },
    { edu_type => 'm.typing', content => { room_id => [], user_id => $CAROL, typing => $TRUE } },
    { edu_type => 'm.receipt', content => { $ROOM => 'x' } },
    { edu_type => 'm.receipt', content => { $ROOM => { 'm.read' => { $CAROL => { event_ids => 'x' } } } } },
    { edu_type => 'm.receipt', content => { $ROOM => { 'm.read' => { $CAROL => { event_ids => [[]] } } } } },
    { edu_type => 'm.receipt', content => { '!nope:module.test' => { 'm.read' => {
        $CAROL => { event_ids => [$SILO_EV] } } } } },
    { edu_type => 'm.presence', content => { push => [ { user_id => $CAROL, presence => 'online',
                                                        last_active_ago => 5 } ] } },
    { edu_type => 'm.device_list_update', content => { nonsense => 1 } } ]);
is $status, 200, 'malformed EDUs: 200' or diag $body;
is_deeply $json, { pdus => { $id3 => {} } }, 'and the PDU with them accepted';
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id3'}, 1), 1,
   'and delivered';

# --- nothing declared: the fallback for reactions, no typing nor receipts ------------

$t->send_txn([], edus => [typing_edu($CAROL, $TRUE)]);
is eventually(sprintf($TYPING, $CAROL), 'typing'), 'typing', 'carol types again';
$t->restart_nginx(workers => 1);

my ($x4, $xid4) = react($id1, $PARTY);
($status, $json) = $t->send_txn([$x4]);
is_deeply $json, { pdus => { $xid4 => {} } }, 'without "reactions": a reaction accepted';
is eventually(qq{SELECT source || ' / ' || reply_to FROM chat.messages WHERE matrix_event_id = '$xid4'},
              encode_utf8("reacted with $PARTY / $SILO1")),
   encode_utf8("reacted with $PARTY / $SILO1"), 'the silo has it as a reply to the message reacted to';
is $pg->psql(qq{SELECT count(*) FROM chat.reactions WHERE event_id = '$xid4'}), 0, 'not as a reaction';

my ($d2, $did2) = carol(type => 'm.room.redaction', redacts => $xid4, content => {});
$t->send_txn([$d2]);
is eventually(qq{SELECT deleted_at IS NOT NULL FROM chat.messages WHERE matrix_event_id = '$xid4'}, 't'),
   't', 'its redaction deletes that message';

my $UNTIL = q{SELECT t.until FROM chat.typing t JOIN chat.users u ON u.id = t.user_id
                WHERE t.room_id = 1 AND u.matrix_user_id = '@carol:remote.test'};
my $until = $pg->psql($UNTIL);
$pg->psql(q{UPDATE chat.read_markers SET message_id = (SELECT min(id) FROM chat.messages WHERE room_id = 1)});
my $before = $pg->psql(sprintf($READ, $CAROL));
$t->send_txn([], edus => [typing_edu($CAROL, $FALSE), receipt_edu($CAROL, $SILO_EV)]);
my ($m4, $id4) = carol(content => { msgtype => 'm.text', body => 'a marker' });
$t->send_txn([$m4]);
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id4'}, 1), 1,
   '(a message sent after them arrived)';
sleep 0.5;
is $pg->psql($UNTIL), $until, 'without "typing": her stop did not reach the silo';
is $pg->psql(sprintf($READ, $CAROL)), $before, 'without "receipts": her marker did not move';

unlike $t->ngx->error_log, qr/\[(alert|crit|emerg)\]|segmentation/i, 'no alerts or crashes';

done_testing;
