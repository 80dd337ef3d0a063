# Transactions pushed to us: PUT /_matrix/federation/v1/send/{txnId} from a
# fake homeserver (python3-signedjson) whose user carol has joined a silo
# room, and what the reference silo (examples/silo) gets of it through its
# internal API: messages, formatted, replies, threads, edits, redactions;
# idempotent transactions, per-PDU errors, rejection, soft failure, the
# content hash, and delivery after the silo has been away.

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

my ($status, $json, $body);

my $USER = '@carol:remote.test';
my $ROOM = '!general:module.test';

# carol joins General: the room's events are made, remote.test is in it
($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=10");
is $status, 200, 'make_join: 200';
my $signed = $fake->sign_event('remote.test', '10', $json->{event});
($status, $json, $body) = fed('PUT',
    "/_matrix/federation/v2/send_join/$ROOM/$signed->{event_id}", $signed->{event});
is $status, 200, 'send_join: 200' or diag $body;
my $CAROL_JOIN = $signed->{event_id};

my $MEMBER = q{SELECT count(*) FROM chat.memberships m JOIN chat.users u
                 ON u.id = m.user_id
                WHERE m.room_id = 1 AND u.matrix_user_id = '@carol:remote.test'};
is eventually($MEMBER, 1), 1, 'the silo has carol in General';

my $RNID = $pg->psql(qq{SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$ROOM'});
sub state_id {
    my ($type, $key, $rnid) = @_;
    $rnid //= $RNID;
    return scalar $pg->psql(qq{SELECT e.event_id FROM matrix.room_state s JOIN matrix.events e
                          ON e.nid = s.event_nid
                         WHERE s.room_nid = $rnid AND s.type = '$type'
                           AND s.state_key = '$key'});
}
my $CREATE = state_id('m.room.create', '');
my $PL = state_id('m.room.power_levels', '');

# a room's head as the module has it (default: General's): [prev_events], depth
sub head {
    my $rnid = shift // $RNID;
    my $h = decode_json(scalar $pg->psql(qq{SELECT jsonb_build_object(
        'prev', jsonb_agg(e.event_id ORDER BY e.nid), 'depth', max(e.depth) + 1)
          FROM matrix.forward_extremities f JOIN matrix.events e ON e.nid = f.event_nid
         WHERE f.room_nid = $rnid}));
    return ($h->{prev}, $h->{depth});
}

# an event of SENDER in the room (of nid RNID) after PREV (default: the head), signed
sub event {
    my (%o) = @_;
    my ($prev, $depth) = head($o{rnid});
    $prev = $o{prev} if $o{prev};
    $depth = $o{depth} if $o{depth};
    my $ev = {
        type => $o{type} // 'm.room.message',
        room_id => $o{room_id} // $ROOM,
        sender => $o{sender} // $USER,
        origin => 'remote.test',
        origin_server_ts => int(Time::HiRes::time() * 1000),
        depth => $depth, prev_events => $prev,
        auth_events => $o{auth} // [$CREATE, $PL, $CAROL_JOIN],
        content => $o{content},
        defined $o{state_key} ? (state_key => $o{state_key}) : (),
        defined $o{redacts} ? (redacts => $o{redacts}) : (),
    };
    my $s = $fake->sign_event('remote.test', '10', $ev);
    return ($s->{event}, $s->{event_id});
}

sub text { return { msgtype => 'm.text', body => $_[0] } }

my $txn_n = 0;
sub send_txn {
    my ($pdus, %o) = @_;
    my $txn = $o{txn} // ('t' . ++$txn_n);
    my $uri = "/_matrix/federation/v1/send/$txn";
    my ($st, $js, $bd) = fed('PUT', $uri, {
        origin => $o{origin} // 'remote.test',
        origin_server_ts => int(Time::HiRes::time() * 1000),
        pdus => $pdus, $o{edus} ? (edus => $o{edus}) : () });
    $spec->valid_ok('server-server', 'PUT', $uri, $st, $bd,
                    "/send $txn matches the spec") if $st == 200;
    return ($st, $js, $bd);
}

sub silo_msg {
    my ($event_id, $cols) = @_;
    return $pg->psql(qq{SELECT $cols FROM chat.messages WHERE matrix_event_id = '$event_id'});
}

my $OUTBOX_EMPTY = 'SELECT count(*) FROM matrix.silo_outbox';

# --- a message --------------------------------------------------------------

my ($m1, $id1) = event(content => text('hello from carol'));
($status, $json, $body) = send_txn([$m1], txn => 'first');
is $status, 200, '/send: 200' or diag $body;
is_deeply $json, { pdus => { $id1 => {} } }, 'the PDU is accepted';
is $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id = '$id1'}), 1,
   'stored before the answer';
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id1'}, 1), 1,
   'the silo has the message' or diag join "\n", grep { /silo/ } split /\n/, $ngx->error_log;
is silo_msg($id1, 'source'), 'hello from carol', 'with its text';
is silo_msg($id1, '(SELECT matrix_user_id FROM chat.users u WHERE u.id = user_id)'),
   $USER, 'as carol\'s virtual user';
my $silo1 = silo_msg($id1, 'id');

# the same transaction again: the same answer, nothing done
my ($again_st, $again_json) = send_txn([$m1], txn => 'first');
is $again_st, 200, 'the same txnId again: 200';
is_deeply $again_json, $json, 'the same answer';
my ($m_other) = event(content => text('not this one'));
($again_st, $again_json) = send_txn([$m_other], txn => 'first');
is_deeply $again_json, $json, 'even with other PDUs: the stored answer';
is $pg->psql(q{SELECT count(*) FROM chat.messages WHERE source = 'not this one'}), 0,
   'and nothing of them done';
is $pg->psql(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id1'}), 1,
   'no second row';

# --- formatted, reply, thread --------------------------------------------------

my ($m2, $id2) = event(content => { msgtype => 'm.text', body => 'bold move',
    format => 'org.matrix.custom.html', formatted_body => '<strong>bold</strong> move' });
($status, $json) = send_txn([$m2]);
is_deeply $json->{pdus}{$id2}, {}, 'a formatted message accepted';
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id2'}, 1), 1,
   'delivered';
like silo_msg($id2, 'html'), qr{<strong>bold</strong>}, 'formatted_body became the html';

my ($m3, $id3) = event(content => { %{ text('a reply') },
    'm.relates_to' => { 'm.in_reply_to' => { event_id => $id1 } } });
my ($m4, $id4) = event(prev => [$id3], depth => (head())[1] + 1,
    content => { %{ text('in the thread') },
    'm.relates_to' => { rel_type => 'm.thread', event_id => $id1, is_falling_back => JSON::PP::true,
                        'm.in_reply_to' => { event_id => $id1 } } });
($status, $json) = send_txn([$m3, $m4]);
is_deeply $json->{pdus}, { $id3 => {}, $id4 => {} }, 'a reply and a thread message, in one transaction';
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id IN ('$id3', '$id4')}, 2), 2,
   'both delivered';
is silo_msg($id3, 'reply_to'), $silo1, 'the reply answers the silo message of its event';
is silo_msg($id4, 'thread_root'), $silo1, 'the thread message is in the thread of it';
is silo_msg($id4, 'reply_to'), '', 'a thread fallback is no reply';

# a reply to a message the silo wrote itself (its event rebuilt from the silo)
my ($silo_ev, $silo_mid) = split /\|/, $pg->psql(qq{SELECT event_id || '|' || silo_message_id
    FROM matrix.events WHERE room_nid = $RNID AND silo_message_id IS NOT NULL ORDER BY nid DESC LIMIT 1});
my ($m5, $id5) = event(content => { %{ text('re: yours') },
    'm.relates_to' => { 'm.in_reply_to' => { event_id => $silo_ev } } });
send_txn([$m5]);
is eventually(qq{SELECT coalesce(reply_to::text, 'none') FROM chat.messages WHERE matrix_event_id = '$id5'},
              $silo_mid), $silo_mid, 'a reply to a silo message names it';

# --- edit, redaction ------------------------------------------------------------

my ($e1, $eid1) = event(content => { %{ text('* hello, edited') },
    'm.new_content' => text('hello, edited'),
    'm.relates_to' => { rel_type => 'm.replace', event_id => $id1 } });
($status, $json) = send_txn([$e1]);
is_deeply $json->{pdus}{$eid1}, {}, 'an edit accepted';
is eventually(qq{SELECT source FROM chat.messages WHERE id = $silo1}, 'hello, edited'),
   'hello, edited', 'the silo message has the new text';
is $pg->psql(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$eid1'}), 0,
   'and no message of its own';

my ($r1, $rid1) = event(type => 'm.room.redaction', redacts => $id2, content => {});
($status, $json) = send_txn([$r1]);
is_deeply $json->{pdus}{$rid1}, {}, 'a redaction accepted';
is eventually(qq{SELECT deleted_at IS NOT NULL FROM chat.messages WHERE matrix_event_id = '$id2'}, 't'),
   't', 'the silo message is deleted';
my $esc2 = $id2; $esc2 =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;
($status, $json) = fed('GET', "/_matrix/federation/v1/event/$esc2");
is $status, 200, 'the redacted event is still served';
is_deeply $json->{pdus}[0]{content}, {}, 'redacted: no content left';
is eventually($OUTBOX_EMPTY, 0), 0, 'the outbox is empty';

# --- refusals ---------------------------------------------------------------------

($status, $json) = send_txn([ map { $m1 } 1 .. 51 ]);
is $status, 400, '51 PDUs: 400';
is $json->{errcode}, 'M_BAD_JSON', 'M_BAD_JSON';
($status, $json) = send_txn([], edus => [ map { { edu_type => 'm.typing', content => {} } } 1 .. 101 ]);
is $status, 400, '101 EDUs: 400';
($status, $json) = send_txn([$m1], origin => 'elsewhere.test');
is $status, 400, 'an origin that is not the sender: 400';

($status, $json, $body) = send_txn([], edus => [
    { edu_type => 'm.typing', content => { room_id => $ROOM, user_id => $USER, typing => JSON::PP::true } },
    { edu_type => 'm.receipt', content => {} } ]);
is $status, 200, 'EDUs: 200 (dropped)' or diag $body;

# dave of remote.test is not in the room
my ($d1, $did1) = event(sender => '@dave:remote.test', content => text('let me in'),
                        auth => [$CREATE, $PL]);
# carol may not change the power levels
my ($p1, $pid1) = event(type => 'm.room.power_levels', state_key => '',
    content => { users => { $USER => 100 } });
# a room we do not have, and a good message with them
my ($u1, $uid1) = event(room_id => '!nope:module.test', content => text('lost'));
my ($m6, $id6) = event(content => text('still here'));
($status, $json, $body) = send_txn([$d1, $p1, $u1, $m6]);
is $status, 200, 'a transaction with bad PDUs: 200' or diag $body;
like $json->{pdus}{$did1}{error}, qr/rejected/, 'a sender not in the room: rejected';
like $json->{pdus}{$pid1}{error}, qr/rejected/, 'power levels without the power: rejected';
is $json->{pdus}{$uid1}{error}, 'unknown room', 'a room we do not have: unknown room';
is_deeply $json->{pdus}{$id6}, {}, 'the good one of them is accepted';
is $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id IN ('$did1', '$pid1', '$uid1')}), 0,
   'none of the bad ones stored';
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id = '$id6'}, 1), 1,
   'the good one delivered';
is $pg->psql(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id IN ('$did1', '$pid1')}), 0,
   'the rejected ones not';

my ($g1, $gid1) = event(prev => ['$notanevent'], content => text('after a gap'));
($status, $json) = send_txn([$g1]);
is $json->{pdus}{$gid1}{error}, 'missing prev events',
   'prev events we lack and its server does not give: an error';
ok((grep { $_->{path} =~ m{^/_matrix/federation/v1/get_missing_events/} }
    $fake->requests(method => 'POST')), 'after asking its server for them');

# a gap its server fills: the missing event comes by get_missing_events,
# is checked and stored first, and the PDU sent after it is accepted
my ($gap, $gap_id) = event(content => text('the one in the gap'));
my ($after, $after_id) = event(prev => [$gap_id], depth => $gap->{depth} + 1,
                               content => text('the one after the gap'));
$fake->configure_global({ keys => { 'module.test' => { 'ed25519:1' => $MatrixTest::SPEC_PUBLIC_KEY } } });
$fake->configure('remote.test', { behaviour => {
    'POST /_matrix/federation/v1/get_missing_events/' => { json => { events => [$gap] } } } });
($status, $json) = send_txn([$after]);
is_deeply $json->{pdus}, { $after_id => {} },
   "a PDU after a gap its server fills: accepted (and only it answered)" or diag encode_json($json);
is $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id IN ('$gap_id', '$after_id')}), 2,
   'both stored';
is eventually(qq{SELECT string_agg(source, ' / ' ORDER BY id) FROM chat.messages
                  WHERE matrix_event_id IN ('$gap_id', '$after_id')},
              'the one in the gap / the one after the gap'),
   'the one in the gap / the one after the gap', 'both delivered, in order';
$fake->configure('remote.test', { behaviour => undef });

my ($f1, $fid1) = event(content => text('forged'));
my $forged = $fake->sign_event('remote.test', '10',
    do { my $t = decode_json(encode_json($f1)); delete @$t{qw(hashes signatures)}; $t },
    forged => 1);
($status, $json) = send_txn([$forged->{event}]);
like $json->{pdus}{$forged->{event_id}}{error}, qr/signature/, 'a bad signature: an error';

# content changed after signing: the signature (of the redacted form) holds,
# the hash does not: stored redacted, not given to the silo
my ($h1, $hid1) = event(content => text('original'));
$h1->{content} = text('tampered');
($status, $json) = send_txn([$h1]);
is_deeply $json->{pdus}{$hid1}, {}, 'a wrong content hash: accepted, redacted';
is $pg->psql(qq{SELECT pdu::jsonb -> 'content' FROM matrix.events WHERE event_id = '$hid1'}), '{}',
   'stored without its content';
is eventually($OUTBOX_EMPTY, 0), 0, 'outbox empty';
is $pg->psql(q{SELECT count(*) FROM chat.messages WHERE source IN ('original', 'tampered')}), 0,
   'the silo never sees it';

# --- batches: a room's PDUs checked and stored together -------------------------

# carol joins Random as well
my $ROOM2 = '!random:module.test';
($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM2/$USER?ver=10");
is $status, 200, 'make_join Random: 200';
$signed = $fake->sign_event('remote.test', '10', $json->{event});
($status, $json, $body) = fed('PUT',
    "/_matrix/federation/v2/send_join/$ROOM2/$signed->{event_id}", $signed->{event});
is $status, 200, 'send_join Random: 200' or diag $body;
my $CAROL_JOIN2 = $signed->{event_id};
my $RNID2 = $pg->psql(qq{SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '$ROOM2'});
my @AUTH2 = (state_id('m.room.create', '', $RNID2), state_id('m.room.power_levels', '', $RNID2),
             $CAROL_JOIN2);

sub soft_failed_of {
    my $in = join ',', map { "'$_'" } @_;
    return $pg->psql(qq{SELECT string_agg(soft_failed::text, ',' ORDER BY nid)
                          FROM matrix.events WHERE event_id IN ($in)});
}

# two rooms mixed, and in each a PDU after one of the same transaction
my ($a1, $aid1) = event(content => text('batch general 1'));
my ($b1, $bid1) = event(rnid => $RNID2, room_id => $ROOM2, auth => [@AUTH2],
                        content => text('batch random 1'));
my ($a2, $aid2) = event(prev => [$aid1], depth => $a1->{depth} + 1,
                        content => text('batch general 2'));
my ($b2, $bid2) = event(rnid => $RNID2, room_id => $ROOM2, auth => [@AUTH2],
                        prev => [$bid1], depth => $b1->{depth} + 1,
                        content => text('batch random 2'));
($status, $json, $body) = send_txn([$a1, $b1, $a2, $b2]);
is $status, 200, 'a transaction of two rooms: 200' or diag $body;
is_deeply $json->{pdus}, { $aid1 => {}, $bid1 => {}, $aid2 => {}, $bid2 => {} },
   'every PDU accepted, those after one of the same transaction too' or diag explain $json;
is soft_failed_of($aid1, $bid1, $aid2, $bid2), 'false,false,false,false', 'all four stored';
is_deeply [(head())[0]], [[$aid2]], "General's extremity: its last";
is_deeply [(head($RNID2))[0]], [[$bid2]], "Random's extremity: its last";
# in order within each room; the two rooms go side by side
is eventually(qq{SELECT count(*) FROM chat.messages
                  WHERE matrix_event_id IN ('$aid1', '$aid2', '$bid1', '$bid2')}, 4), 4,
   'all delivered';
is $pg->psql(qq{SELECT string_agg(source, ' / ' ORDER BY id) FROM chat.messages
                 WHERE matrix_event_id IN ('$aid1', '$aid2')}),
   'batch general 1 / batch general 2', 'General\'s in order';
is $pg->psql(qq{SELECT string_agg(source, ' / ' ORDER BY id) FROM chat.messages
                 WHERE matrix_event_id IN ('$bid1', '$bid2')}),
   'batch random 1 / batch random 2', 'Random\'s in order';
my $ROOM2_SILO = q{SELECT string_agg(source, ' / ' ORDER BY id) FROM chat.messages WHERE room_id = 2
                    AND source LIKE 'batch random%'};
is $pg->psql($ROOM2_SILO), 'batch random 1 / batch random 2', 'in the silo room of each';

# frank joins Random and speaks in the same transaction, his message
# authorised by his join: the state as the PDU before it left it
my $FRANK = '@frank:remote.test';
my ($fj, $fjid) = event(rnid => $RNID2, room_id => $ROOM2, type => 'm.room.member',
    state_key => $FRANK, sender => $FRANK, content => { membership => 'join' },
    auth => [@AUTH2[0, 1], state_id('m.room.join_rules', '', $RNID2)]);
my ($fm, $fmid) = event(rnid => $RNID2, room_id => $ROOM2, sender => $FRANK,
    prev => [$fjid], depth => $fj->{depth} + 1, content => text('frank here'),
    auth => [@AUTH2[0, 1], $fjid]);
($status, $json) = send_txn([$fj, $fm]);
is_deeply $json->{pdus}, { $fjid => {}, $fmid => {} },
   'a join and a message it authorises, in one transaction: accepted' or diag explain $json;
is soft_failed_of($fjid, $fmid), 'false,false', 'neither soft-failed';
is eventually(q{SELECT count(*) FROM chat.messages WHERE source = 'frank here'}, 1), 1,
   'the message delivered';

# frank leaves, and in the same transaction speaks after his leave (the
# state before it does not allow it: rejected) and beside it (it does,
# the room's does not: soft-failed)
my ($fl, $flid) = event(rnid => $RNID2, room_id => $ROOM2, type => 'm.room.member',
    state_key => $FRANK, sender => $FRANK, content => { membership => 'leave' },
    auth => [@AUTH2[0, 1], $fjid]);
my ($fa, $faid) = event(rnid => $RNID2, room_id => $ROOM2, sender => $FRANK,
    prev => [$flid], depth => $fl->{depth} + 1, content => text('frank after'),
    auth => [@AUTH2[0, 1], $fjid]);
my ($fb, $fbid) = event(rnid => $RNID2, room_id => $ROOM2, sender => $FRANK,
    content => text('frank beside'), auth => [@AUTH2[0, 1], $fjid]);
($status, $json) = send_txn([$fl, $fa, $fb]);
is_deeply $json->{pdus}{$flid}, {}, 'his leave accepted';
like $json->{pdus}{$faid}{error}, qr/^rejected by the state before it: /,
   'after it: rejected by the state before it' or diag explain $json;
is_deeply $json->{pdus}{$fbid}, {}, 'beside it: answered as accepted';
is soft_failed_of($flid, $faid, $fbid), 'false,true', 'stored soft-failed';

# he joins again, leaves, and speaks after his join (before his leave):
# the state before it is the state as the transaction's join left it
my ($fj2, $fjid2) = event(rnid => $RNID2, room_id => $ROOM2, type => 'm.room.member',
    state_key => $FRANK, sender => $FRANK, content => { membership => 'join' },
    auth => [@AUTH2[0, 1], state_id('m.room.join_rules', '', $RNID2), $flid]);
my ($fl2, $flid2) = event(rnid => $RNID2, room_id => $ROOM2, type => 'm.room.member',
    state_key => $FRANK, sender => $FRANK, content => { membership => 'leave' },
    prev => [$fjid2], depth => $fj2->{depth} + 1, auth => [@AUTH2[0, 1], $fjid2]);
my ($fc, $fcid) = event(rnid => $RNID2, room_id => $ROOM2, sender => $FRANK,
    prev => [$fjid2], depth => $fj2->{depth} + 1, content => text('frank between'),
    auth => [@AUTH2[0, 1], $fjid2]);
($status, $json) = send_txn([$fj2, $fl2, $fc]);
is_deeply $json->{pdus}, { $fjid2 => {}, $flid2 => {}, $fcid => {} },
   'a message beside a leave of the same transaction: answered as accepted' or diag explain $json;
is soft_failed_of($fjid2, $flid2, $fcid), 'false,false,true', 'soft-failed, not rejected';

# one refused in the middle: those after it that name it refused too (no
# gap asked for them), the others accepted
my $GME = sub { scalar grep { $_->{path} =~ m{^/_matrix/federation/v1/get_missing_events/} }
                $fake->requests(method => 'POST') };
my $asked = $GME->();
my ($c1, $cid1) = event(content => text('before the bad one'));
my ($c2, $cid2) = event(type => 'm.room.power_levels', state_key => '',
    prev => [$cid1], depth => $c1->{depth} + 1, content => { users => { $USER => 100 } });
my ($c3, $cid3) = event(prev => [$cid2], depth => $c1->{depth} + 2,
                        content => text('after the bad one'));
my ($c4, $cid4) = event(prev => [$cid1], depth => $c1->{depth} + 1,
                        content => text('beside the bad one'));
my ($c5, $cid5) = event(prev => [$cid1], depth => $c1->{depth} + 1,
                        auth => [$CREATE, $cid2, $CAROL_JOIN], content => text('authorised by the bad one'));
($status, $json) = send_txn([$c1, $c2, $c3, $c4, $c5]);
is $status, 200, 'a transaction with a bad PDU in the middle: 200';
is_deeply $json->{pdus}{$cid1}, {}, 'the one before it accepted';
like $json->{pdus}{$cid2}{error}, qr/^rejected/, 'the bad one rejected';
is $json->{pdus}{$cid3}{error}, 'missing prev events', 'one after it that follows it: refused';
like $json->{pdus}{$cid5}{error}, qr/^rejected: it cites auth events/,
   'one it would authorise: rejected';
is_deeply $json->{pdus}{$cid4}, {}, 'one after it that does not name it: accepted';
is $GME->(), $asked, 'no gap asked for what this transaction refused';
is soft_failed_of($cid1, $cid2, $cid3, $cid4, $cid5), 'false,false', 'the two good ones stored';
is eventually(q{SELECT string_agg(source, ' / ' ORDER BY id) FROM chat.messages
                 WHERE source IN ('before the bad one', 'beside the bad one')},
              'before the bad one / beside the bad one'),
   'before the bad one / beside the bad one', 'and delivered';
is_deeply [sort @{ (head())[0] }], [$cid4], 'the head: the last good one';

# the batch append itself (matrix_append_received_batch), in a room of its
# own: all at once when all may go in, else one by one (one refused)
$pg->psql(q{INSERT INTO matrix.matrix_rooms (room_id, room_version)
            VALUES ('!scratch:module.test', '10')});
my $SNID = $pg->psql(q{SELECT room_nid FROM matrix.matrix_rooms WHERE room_id = '!scratch:module.test'});
sub rec {
    my ($id, $depth, $prev, %o) = @_;
    return { event_id => $id, type => $o{type} // 'm.room.message', sender => '@x:remote.test',
             depth => $depth, ts => 1, prev => $prev, auth => [], pdu => '{}',
             defined $o{state_key} ? (state_key => $o{state_key}) : (),
             $o{soft} ? (soft_failed => JSON::PP::true) : () };
}
sub append_batch {
    my $recs = encode_json([@_]);
    $recs =~ s/'/''/g;
    return decode_json(scalar $pg->psql(
        qq{SET search_path = matrix; SELECT matrix_append_received_batch($SNID, '$recs')}));
}
sub scratch {
    return $pg->psql(qq{SELECT string_agg(e.event_id || ':' || coalesce(array_to_string(ARRAY(
                              SELECT p.event_id FROM matrix.events p WHERE p.nid = ANY (e.prev_nids)
                              ORDER BY p.nid), '+'), '') || (CASE WHEN e.soft_failed THEN '~' ELSE '' END),
                              ' ' ORDER BY e.nid)
                          FROM matrix.events e WHERE e.room_nid = $SNID});
}
sub scratch_ext {
    return $pg->psql(qq{SELECT string_agg(e.event_id, ' ' ORDER BY e.nid) FROM matrix.forward_extremities f
                          JOIN matrix.events e ON e.nid = f.event_nid WHERE f.room_nid = $SNID});
}
my $nids = append_batch(rec('s1', 1, [], type => 'm.room.create', state_key => ''),
                        rec('s2', 2, ['s1']), rec('s3', 3, ['s2']), rec('s4', 2, ['s1'], soft => 1),
                        rec('s5', 3, ['s2', 's4']));
is scalar(grep { defined } @$nids), 5, 'a batch that may all go in: five nids';
is_deeply $nids, [sort { $a <=> $b } @$nids], 'in order';
is scratch(), 's1: s2:s1 s3:s2 s4:s1~ s5:s2+s4', 'each after what it names, the soft-failed one marked';
is scratch_ext(), 's3 s5', 'the extremities: what nothing after names (the soft-failed one never)';
is $pg->psql(qq{SELECT e.event_id FROM matrix.room_state s JOIN matrix.events e ON e.nid = s.event_nid
                 WHERE s.room_nid = $SNID}), 's1', 'the state';
$nids = append_batch(rec('s6', 4, ['s3']), rec('s7', 4, ['nope']), rec('s8', 5, ['s6']),
                     rec('s9', 9, ['s8']), rec('s3', 3, ['s2']));
is_deeply [map { defined $_ ? 1 : 0 } @$nids], [1, 0, 1, 0, 1],
   'one naming what the room lacks, one too deep: those refused, the rest in, one by one';
is scratch(), 's1: s2:s1 s3:s2 s4:s1~ s5:s2+s4 s6:s3 s8:s6', 'as they would have been';
is scratch_ext(), 's5 s8', 'the extremities';

# --- the silo away -------------------------------------------------------------

$t->silo_stop;
my @ids;
for my $n (1 .. 3) {
    my ($ev, $id) = event(content => text("while away $n"));
    ($status, $json) = send_txn([$ev]);
    is_deeply $json->{pdus}{$id}, {}, "message $n while the silo is down: accepted";
    push @ids, $id;
}
sleep 1.5;
is $pg->psql($OUTBOX_EMPTY), 3, 'they wait in the outbox';
$pg->psql('UPDATE matrix.silo_outbox SET next_attempt_ts = 0');
$t->silo_start;
my $IN = join ',', map { "'$_'" } @ids;
is eventually(qq{SELECT count(*) FROM chat.messages WHERE matrix_event_id IN ($IN)}, 3), 3,
   'delivered once the silo is back';
is eventually($OUTBOX_EMPTY, 0), 0, 'outbox empty';
is $pg->psql(qq{SELECT string_agg(source, ',' ORDER BY id) FROM chat.messages
                 WHERE matrix_event_id IN ($IN)}), 'while away 1,while away 2,while away 3',
   'once each, in order';

# --- soft failure: carol leaves, then speaks with her old join ---------------------

# erin of remote.test joins by a /send, so that remote.test stays in the room
my $ERIN = '@erin:remote.test';
my ($j2, $jid2) = event(type => 'm.room.member', state_key => $ERIN, sender => $ERIN,
    content => { membership => 'join' },
    auth => [$CREATE, $PL, state_id('m.room.join_rules', '')]);
($status, $json) = send_txn([$j2]);
is_deeply $json->{pdus}{$jid2}, {}, 'erin joins by a /send';
is eventually(q{SELECT count(*) FROM chat.memberships m JOIN chat.users u ON u.id = m.user_id
                 WHERE m.room_id = 1 AND u.matrix_user_id = '@erin:remote.test'}, 1), 1,
   'the silo has erin in General';

my ($l1, $lid1) = event(type => 'm.room.member', state_key => $USER,
                        content => { membership => 'leave' });
($status, $json) = send_txn([$l1]);
is_deeply $json->{pdus}{$lid1}, {}, 'carol leaves by a /send';
is eventually($MEMBER, 0), 0, 'the silo no longer has carol in General';

# after her leave, by her old join: the state before it (after her leave)
# does not allow it
my ($s0, $sid0) = event(content => text('ghost after'));
($status, $json) = send_txn([$s0]);
like $json->{pdus}{$sid0}{error}, qr/^rejected by the state before it: /,
   'a message after her leave: rejected by the state before it' or diag explain $json;
is $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id = '$sid0'}), 0, 'not stored';

# beside her leave (from before it), by her old join: allowed by the
# state before it, not by the room's
my ($s1, $sid1) = event(prev => $l1->{prev_events}, depth => $l1->{depth},
                        content => text('ghost'));
($status, $json) = send_txn([$s1]);
is $status, 200, 'a message by her old join: 200';
is_deeply $json->{pdus}{$sid1}, {}, 'answered as accepted' or diag explain $json;
is $pg->psql(qq{SELECT soft_failed FROM matrix.events WHERE event_id = '$sid1'}), 't',
   'stored soft-failed';
isnt((head())[0][0], $sid1, 'not an extremity');
is eventually($OUTBOX_EMPTY, 0), 0, 'outbox empty';
is $pg->psql(q{SELECT count(*) FROM chat.messages WHERE source = 'ghost'}), 0, 'not delivered';

unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]|segmentation/i, 'no alerts or crashes';

done_testing;
