# Silo -> Matrix, live: messages written, edited and deleted in the silo
# (the reference silo: examples/silo) become events through the change
# feed, and reach the other servers in the room as transactions
# (PUT /send): in order, signed, retried with the same txnId, across a
# reload, from two workers; the fake homeserver is the receiving server.

use strict;
use warnings;

use Test::More;
use JSON::PP;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test', 'slow.test'], workers => 2);
my ($pg, $fake, $ngx, $spec) = ($t->pg, $t->fake, $t->ngx, $t->spec);
my $KEYS = $t->verify_keys;
my $JSON = JSON::PP->new->canonical;

sub fed        { $t->fed(@_) }
sub eventually { $t->eventually(@_) }
sub events_ok  { $t->events_ok(@_) }

# the receiver checks our X-Matrix signatures with our key
$fake->configure_global({ keys => $KEYS });

my $USER = '@carol:remote.test';
my $ROOM = '!general:module.test';

my ($status, $json, $body) = fed('GET',
    "/_matrix/federation/v1/make_join/$ROOM/$USER?ver=10");
is $status, 200, 'make_join: 200' or diag $body;
my $signed = $fake->sign_event('remote.test', '10', $json->{event});
my ($join, $join_id) = ($signed->{event}, $signed->{event_id});
($status, $json, $body) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$join_id", $join);
is $status, 200, 'carol joined: remote.test is in the room' or diag $body;

sub head_ids {
    return [ split /\n/, $pg->psql(qq{SELECT e.event_id FROM matrix.forward_extremities f
        JOIN matrix.events e ON e.nid = f.event_nid JOIN matrix.matrix_rooms r
          ON r.room_nid = f.room_nid WHERE r.room_id = '$ROOM' ORDER BY e.nid}) ];
}

# the PDUs of the transactions remote.test received (answered 200), in order
sub sent_pdus {
    my (%o) = @_;
    my @pdus;
    for my $r ($fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/')) {
        next if $o{ok} && ($r->{status} // 0) != 200;
        push @pdus, @{ $r->{json}{pdus} || [] };
    }
    return @pdus;
}

# waits until the PDUs received satisfy COND (at most SECS seconds)
sub wait_pdus {
    my ($cond, $secs) = @_;
    my @pdus;
    for (1 .. ($secs // 15) * 10) {
        @pdus = sent_pdus(ok => 1);
        return @pdus if $cond->(@pdus);
        sleep 0.1;
    }
    diag join "\n", grep { /sender|feed|matrix/ } split /\n/, $ngx->error_log;
    return @pdus;
}

sub by_body {
    my ($b) = @_;
    return sub { grep { ($_->{content}{body} // '') eq $b } @_ };
}

sub post {
    my ($user, $text, %o) = @_;
    return $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source, html, reply_to)
        VALUES (1, $user, '$text', @{[ defined $o{html} ? "'$o{html}'" : 'NULL' ]},
                @{[ $o{reply_to} // 'NULL' ]}) RETURNING id});
}

$fake->reset;

# --- a message from a silo user already in the Matrix room ---------------------

my $joined_author = $pg->psql(qq{SELECT u.id FROM chat.users u
    JOIN matrix.room_state s ON s.state_key = '\@' || u.handle || ':module.test'
    JOIN matrix.matrix_rooms r ON r.room_nid = s.room_nid
   WHERE r.room_id = '$ROOM' AND s.membership = 'join' ORDER BY u.id LIMIT 1});
ok $joined_author, "a silo author already joined ($joined_author)";

my $before = head_ids();
is_deeply $before, [$join_id], 'the head is carol\'s join';

my $m1 = post($joined_author, 'hello from the silo', html => '<p>hello from the silo</p>');
my @pdus = wait_pdus(by_body('hello from the silo'));
my ($ev) = by_body('hello from the silo')->(@pdus);
ok $ev, 'remote.test received the message in a transaction';
is $ev && $ev->{type}, 'm.room.message', 'm.room.message';
is $ev && $ev->{content}{formatted_body}, '<p>hello from the silo</p>', 'with its HTML';
is_deeply $ev && $ev->{prev_events}, $before, 'after the previous head (DAG)';
my $chk = $ev ? $fake->check_event('10', $ev, $KEYS) : {};
ok $chk->{hash_ok} && $chk->{signatures_ok}, 'hash and signature check out';
my $m1_id = $chk->{event_id};
is $pg->psql(qq{SELECT count(*) FROM matrix.events WHERE event_id = '$m1_id'
                AND recipe IS NOT NULL AND silo_message_id = '$m1'}), 1,
   'the event ID is the one stored, a recipe of the silo row';
is_deeply head_ids(), [$m1_id], 'and it is the new head';
is $pg->psql('SELECT count(*) FROM matrix.silo_changes'), 0, 'the change is consumed';

my @txns = $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
ok((!grep { !$_->{verified} } @txns), 'every transaction is signed (X-Matrix verified)');
is $txns[0]{json}{origin}, 'module.test', 'origin';

# a message the module wrote for a Matrix user is not sent back
$pg->psql(q{INSERT INTO chat.messages (room_id, user_id, source, matrix_event_id)
            VALUES (1, 1, 'from matrix', '$fromMatrix')});

# --- a new silo author: their join comes first ----------------------------------

my $new_author = $pg->psql(q{INSERT INTO chat.users (username, handle, display_name,
    password_hash) VALUES ('zoe', 'zoe', 'Zoe Z', 'x') RETURNING id});
$pg->psql("INSERT INTO chat.memberships (room_id, user_id, role) VALUES (1, $new_author, 'member')");
my $new_handle = $pg->psql("SELECT handle FROM chat.users WHERE id = $new_author");
my $m2 = post($new_author, 'first words', reply_to => $m1);
@pdus = wait_pdus(by_body('first words'));
my ($i_join) = grep { $pdus[$_]{type} eq 'm.room.member'
                      && $pdus[$_]{state_key} eq "\@$new_handle:module.test" } 0 .. $#pdus;
my ($i_msg) = grep { ($pdus[$_]{content}{body} // '') eq 'first words' } 0 .. $#pdus;
ok defined $i_join, "the new author's join was sent ($new_handle)";
ok defined $i_join && defined $i_msg && $i_join < $i_msg, 'before their message';
my $jc = defined $i_join ? $fake->check_event('10', $pdus[$i_join], $KEYS) : {};
ok((grep { $_ eq $jc->{event_id} } @{ $pdus[$i_msg]{auth_events} || [] }),
   'the message is authorised by that join');
is $pdus[$i_msg]{content}{'m.relates_to'}{'m.in_reply_to'}{event_id}, $m1_id,
   'a reply names the event it answers';
ok(!(grep { ($_->{content}{body} // '') eq 'from matrix' } @pdus),
   'the message written for a Matrix user is not sent');
events_ok([@pdus], 'every PDU sent so far');

# --- an edit in place -----------------------------------------------------------

$pg->psql(qq{UPDATE chat.messages SET source = 'hello, edited', html = NULL,
             edited_at = now() WHERE id = $m1});
@pdus = wait_pdus(sub { grep { ($_->{content}{'m.relates_to'}{rel_type} // '') eq 'm.replace' } @_ });
my ($edit) = grep { ($_->{content}{'m.relates_to'}{rel_type} // '') eq 'm.replace' } @pdus;
ok $edit, 'an edit in place is sent as m.replace';
is $edit && $edit->{content}{'m.relates_to'}{event_id}, $m1_id, 'of the original';
is $edit && $edit->{content}{'m.new_content'}{body}, 'hello, edited', 'm.new_content';
is $edit && $edit->{content}{body}, '* hello, edited', 'the "* " fallback';
is $edit && $edit->{sender}, $ev->{sender}, 'by the same sender';
events_ok([$edit || {}], 'the edit');

($status, $json) = fed('GET', "/_matrix/federation/v1/event/$m1_id");
my $orig = $json->{pdus}[0] || {};
is $orig->{content}{body}, 'hello from the silo', 'the original is still served with its text';
events_ok([$orig], 'the original, served after the edit');

# --- a delete -------------------------------------------------------------------

$pg->psql(qq{UPDATE chat.messages SET deleted_at = now() WHERE id = $m2});
my ($m2_id) = map { $fake->check_event('10', $_, $KEYS)->{event_id} }
              by_body('first words')->(@pdus);
@pdus = wait_pdus(sub { grep { $_->{type} eq 'm.room.redaction' } @_ });
my ($red) = grep { $_->{type} eq 'm.room.redaction' } @pdus;
ok $red, 'a delete is sent as m.room.redaction';
is $red && $red->{redacts}, $m2_id, 'redacts (top level, v10) the message';
events_ok([$red || {}], 'the redaction');
is $pg->psql(qq{SELECT redacted_by IS NOT NULL FROM matrix.events WHERE event_id = '$m2_id'}),
   't', 'the message\'s event is marked redacted';

# --- the receiver down: retried, the same transaction, across a reload ----------

$fake->configure('remote.test', { behaviour => {
    'PUT /_matrix/federation/v1/send/' => { status => 500 } } });
$fake->reset;
post($joined_author, "while down $_") for 1 .. 3;

my @tries;
for (1 .. 150) {
    @tries = $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
    last if @tries >= 2;
    sleep 0.1;
}
cmp_ok scalar @tries, '>=', 2, 'the failed transaction is tried again';
is scalar(keys %{{ map { $_->{path} => 1 } @tries }}), 1,
   'with the same txnId: ' . ($tries[0]{path} // '');
is scalar(keys %{{ map { $JSON->encode($_->{json}{pdus}) => 1 } @tries }}), 1,
   'with the same PDUs';

$ngx->reload;
post($joined_author, 'after the reload');
$fake->configure('remote.test', { behaviour => undef });

@pdus = wait_pdus(by_body('after the reload'), 60);
my @bodies = grep { /^(while down|after the reload)/ }
             map { $_->{content}{body} // '' } @pdus;
is_deeply \@bodies, ['while down 1', 'while down 2', 'while down 3', 'after the reload'],
   'all delivered once the receiver is back, in order';

my %seen;
my @dups = grep { $seen{$_->{path}}++ }
           grep { ($_->{status} // 0) == 200 }
           $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
is scalar @dups, 0, 'no transaction delivered twice (two workers)';

is eventually(q{SELECT count(*) FROM matrix.destinations
                 WHERE server_name = 'remote.test'}, 0), 0,
   'the destination is back to no back-off (its row is gone)';
is eventually('SELECT count(*) FROM matrix.federation_outbox', 0), 0,
   'and the outbox is empty (every destination is past it)';

# --- the destination talks to us: its back-off ends at once ---------------------

my $SEND = 'PUT /_matrix/federation/v1/send/';
sub puts { $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/') }

$fake->configure('remote.test', { behaviour => { $SEND => { status => 500 } } });
$fake->reset;
post($joined_author, 'before the reset');
for (1 .. 150) { last if puts() >= 2; sleep 0.1 }
cmp_ok scalar(puts()), '>=', 2, 'two tries failed: the next one is 10 s away';
sleep 1;
$fake->configure('remote.test', { behaviour => undef });
my $t_reset = Time::HiRes::time();
($status) = fed('GET', "/_matrix/federation/v1/event/$m1_id");
is $status, 200, 'remote.test asks us something (authenticated)';
@pdus = wait_pdus(by_body('before the reset'), 5);
ok((grep { ($_->{content}{body} // '') eq 'before the reset' } @pdus),
   'then the transaction goes at once');
cmp_ok Time::HiRes::time() - $t_reset, "<", 5, "well before its back-off ends";

# --- a destination down for long is given up on: it holds no outbox ------------

$fake->configure('remote.test', { behaviour => { $SEND => { status => 500 } } });
$fake->reset;
post($joined_author, 'given up 1');
for (1 .. 150) { last if puts(); sleep 0.1 }
is eventually(q{SELECT count(*) FROM matrix.destinations WHERE server_name = 'remote.test'}, 1),
   1, 'a failure gives remote.test a row';
# as if it had failed for a day
$pg->psql(q{UPDATE matrix.destinations SET failing_since = 1 WHERE server_name = 'remote.test'});
is eventually(q{SELECT given_up FROM matrix.destinations WHERE server_name = 'remote.test'}, 't'),
   't', 'at its next failure it is given up on';
post($joined_author, 'given up 2');
is eventually('SELECT count(*) FROM matrix.federation_outbox', 0), 0,
   'and the outbox is trimmed past it';

$fake->configure('remote.test', { behaviour => undef });
$fake->reset;
($status) = fed('GET', "/_matrix/federation/v1/event/$m1_id");
@pdus = wait_pdus(by_body('given up 2'), 10);
ok((grep { ($_->{content}{body} // '') eq 'given up 2' } @pdus),
   'back, it is sent the room\'s latest event');
is eventually(q{SELECT count(*) FROM matrix.destinations WHERE server_name = 'remote.test'}, 0),
   0, 'and is a healthy destination again (no row)';

# --- a remote join is relayed to the room's other servers ----------------------

($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/\@dan:remote.test?ver=10");
my $dan = $fake->sign_event('remote.test', '10', $json->{event});
($status) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$dan->{event_id}", $dan->{event});
is $status, 200, 'dan of remote.test joins';
@pdus = wait_pdus(sub { grep { ($_->{state_key} // '') eq '@dan:remote.test' } @_ });
ok((grep { ($_->{state_key} // '') eq '@dan:remote.test' } @pdus),
   'the join goes out to the servers in the room with the next transaction');

# --- a server that hangs does not hold up the others ---------------------------

# one worker, so that no other worker can step in for a stuck one
unlike $ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/,
       'no crash, no alert (two workers)';

# --- the sending worker killed mid-way: another takes over, nothing lost -------

my ($owner) = ($ngx->error_log =~ /.*\b(\d+)#\d+: .*matrix sender: this worker sends/s);
ok $owner, 'one worker sends: ' . ($owner // 'none');
$fake->configure('remote.test', { behaviour => { $SEND => { status => 500, delay_ms => 3000 } } });
$fake->reset;
post($joined_author, 'killed 1');
for (1 .. 100) { last if puts(); sleep 0.1 }
ok scalar(puts()), 'a transaction is in flight';
kill 'KILL', $owner if $owner;
$fake->configure('remote.test', { behaviour => undef });
post($joined_author, 'killed 2');
@pdus = wait_pdus(by_body('killed 2'), 30);
@bodies = grep { /^killed/ } map { $_->{content}{body} // '' } @pdus;
is_deeply [ grep { $_ eq 'killed 1' } @bodies ], ['killed 1'], 'the message in flight is delivered';
ok((grep { $_ eq 'killed 2' } @bodies), 'and the next one');
my @owners = ($ngx->error_log =~ /\b(\d+)#\d+: [^\n]*matrix sender: this worker sends/g);
isnt $owners[-1], $owner, 'by another worker';

# the lock's session ends under the owner (the pool's lease "watch"): it
# stops sending at once, and the lock is taken again
$pg->psql(q{SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND classid = 28025 AND objid = 2});
post($joined_author, 'lock lost');
@pdus = wait_pdus(by_body('lock lost'), 30);
ok((grep { ($_->{content}{body} // '') eq 'lock lost' } @pdus),
   'the lock\'s connection killed: the next message still goes');
like $ngx->error_log, qr/lost the connection that holds the sending lock/,
     'the owner heard at once that its lock went';
$ngx = $t->restart_nginx(workers => 1);

($status, $json) = fed('GET', "/_matrix/federation/v1/make_join/$ROOM/\@sam:slow.test?ver=10",
                       undef, 'slow.test');
my $sam = $fake->sign_event('slow.test', '10', $json->{event});
($status) = fed('PUT', "/_matrix/federation/v2/send_join/$ROOM/$sam->{event_id}",
                $sam->{event}, 'slow.test');
is $status, 200, 'sam of slow.test joins';
$fake->configure('slow.test', { behaviour => {
    'PUT /_matrix/federation/v1/send/' => { delay_ms => 20000 } } });

post($joined_author, 'while slow.test hangs 1');
wait_pdus(by_body('while slow.test hangs 1'));
my $t0 = Time::HiRes::time();
post($joined_author, 'while slow.test hangs 2');
@pdus = wait_pdus(by_body('while slow.test hangs 2'), 15);
ok((grep { ($_->{content}{body} // '') eq 'while slow.test hangs 2' } @pdus),
   'remote.test gets the next message while slow.test still hangs');
cmp_ok Time::HiRes::time() - $t0, '<', 10, 'well before slow.test\'s 20 s';
$fake->configure('slow.test', { behaviour => undef });

unlike $ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no crash, no alert';

done_testing;
