# The change feed when a change fails: a change whose transaction the
# database refuses is retried later while the other rooms' changes go on
# and its own room's later changes wait for it; a change that can make no
# event, or fails 10 times, is given up on (left in matrix.silo_changes
# with failed_at) and its room goes on.  Also the feed's housekeeping:
# received transactions older than a day are pruned.

use strict;
use warnings;

use Test::More;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 2);
my ($pg, $fake, $ngx) = ($t->pg, $t->fake, $t->ngx);
my $KEYS = $t->verify_keys;

sub fed { $t->fed(@_) }

$fake->configure_global({ keys => $KEYS });

for my $room ('!general:module.test', '!random:module.test') {
    my ($status, $json, $body) = fed('GET',
        "/_matrix/federation/v1/make_join/$room/\@carol:remote.test?ver=10");
    my $signed = $fake->sign_event('remote.test', '10', $json->{event});
    ($status, $json, $body) = fed('PUT',
        "/_matrix/federation/v2/send_join/$room/$signed->{event_id}", $signed->{event});
    is $status, 200, "carol of remote.test joined $room" or diag $body;
}

# a silo user joined to both rooms (an author of both histories)
my $author = $pg->psql(q{SELECT u.id FROM chat.users u
    WHERE u.matrix_user_id IS NULL
      AND (SELECT count(*) FROM chat.memberships m
            WHERE m.user_id = u.id AND m.room_id IN (1, 2)) = 2
    ORDER BY u.id LIMIT 1});
ok $author, "a silo user in both rooms ($author)";

sub post {
    my ($room, $text, $user) = @_;
    return $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source)
        VALUES ($room, @{[ $user // $author ]}, '$text') RETURNING id});
}

# the bodies of the messages remote.test has received, in order
sub received {
    return map { $_->{content}{body} // () }
           map { @{ $_->{json}{pdus} || [] } }
           grep { ($_->{status} // 0) == 200 }
           $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
}

sub wait_for {
    my ($body, $secs) = @_;
    for (1 .. ($secs // 20) * 10) {
        return 1 if grep { $_ eq $body } received();
        sleep 0.1;
    }
    return 0;
}

sub change_of {
    my ($mid) = @_;
    return $pg->psql(qq{SELECT attempts || '|' || (failed_at IS NOT NULL) || '|'
                               || coalesce(last_error, '')
                          FROM matrix.silo_changes WHERE message_id = '$mid'});
}

# --- the database refuses one change's events -----------------------------------

$pg->psql(q{
CREATE FUNCTION public.poison() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM chat.messages m
                WHERE m.id::text = NEW.silo_message_id
                  AND m.source LIKE 'poison%') THEN
        RAISE EXCEPTION 'poisoned message %', NEW.silo_message_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON matrix.events
    FOR EACH ROW EXECUTE FUNCTION public.poison();
});

$fake->reset;
my $p1 = post(1, 'poison 1');
my $a1 = post(1, 'after the poison');
my $o1 = post(2, 'in the other room');

ok wait_for('in the other room'), 'another room\'s change goes on past the failing one';

my $c;
for (1 .. 100) { $c = change_of($p1); last if $c =~ /^[1-9]/; sleep 0.1 }
like $c, qr/^[1-9]\d*\|false\|poisoned message $p1$/,
     "the failing change is kept, its attempts counted, with the error ($c)";
ok !(grep { /^(poison 1|after the poison)$/ } received()),
   'neither it nor its room\'s later change is sent meanwhile';
is change_of($a1), '0|false|', 'the later change of its room waits, untried';

# the database takes it again: both go, in the room's order
$pg->psql('DROP TRIGGER poison ON matrix.events');
$pg->psql(qq{UPDATE matrix.silo_changes SET retry_at = NULL WHERE message_id = '$p1'});
ok wait_for('after the poison'), 'once the database takes it, the room goes on';
is_deeply [grep { /^(poison 1|after the poison)$/ } received()],
          ['poison 1', 'after the poison'], 'in order, each once';
is $pg->psql(qq{SELECT count(*) FROM matrix.silo_changes
                WHERE message_id IN ('$p1', '$a1', '$o1')}), 0, 'the changes are consumed';

# --- passing trouble (a deadlock, say) waits without counting -------------------

$pg->psql(q{
CREATE FUNCTION public.stall() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM chat.messages m
                WHERE m.id::text = NEW.silo_message_id
                  AND m.source LIKE 'stalled%') THEN
        RAISE EXCEPTION 'a deadlock, as it were' USING ERRCODE = '40P01';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stall BEFORE INSERT ON matrix.events
    FOR EACH ROW EXECUTE FUNCTION public.stall();
});
my $s1 = post(1, 'stalled 1');
post(2, 'while one stalls');
ok wait_for('while one stalls'), 'other rooms go on past a deadlocked change';
for (1 .. 100) { $c = change_of($s1); last if $c =~ /deadlock/; sleep 0.1 }
is $c, '0|false|a deadlock, as it were', 'it waits, its error kept, no attempt counted';
$pg->psql('DROP TRIGGER stall ON matrix.events');
$pg->psql(qq{UPDATE matrix.silo_changes SET retry_at = NULL WHERE message_id = '$s1'});
ok wait_for('stalled 1'), 'then it goes';

# --- 10 failures: given up on ---------------------------------------------------

$pg->psql('CREATE TRIGGER poison BEFORE INSERT ON matrix.events
           FOR EACH ROW EXECUTE FUNCTION public.poison()');
my $p2 = post(1, 'poison 2');
for (1 .. 100) { $c = change_of($p2); last if $c =~ /^[1-9]/; sleep 0.1 }
$pg->psql(qq{UPDATE matrix.silo_changes SET attempts = 9, retry_at = NULL
             WHERE message_id = '$p2'});
my $a2 = post(1, 'after a change given up on');
ok wait_for('after a change given up on'), 'the 10th failure gives it up; the room goes on';
my $c2 = change_of($p2);
like $c2, qr/^1\d\|true\|.*poisoned/, "kept with failed_at for the operator ($c2)";
ok !(grep { $_ eq 'poison 2' } received()), 'and not sent';
like $ngx->error_log, qr/failed 10 times, given up on/, 'logged';
$pg->psql('DROP TRIGGER poison ON matrix.events');

# --- a change that can make no event: given up on at once -----------------------

# a silo message by a virtual user the module did not write: its author is
# not in the users view
my $virtual = $pg->psql(q{INSERT INTO chat.users (display_name, matrix_user_id)
    VALUES ('V', '@v:elsewhere.test') RETURNING id});
$pg->psql("INSERT INTO chat.memberships (room_id, user_id, role) VALUES (1, $virtual, 'member')");
my $bad = post(1, 'by nobody Matrix knows', $virtual);
my $a3 = post(1, 'after the unmakeable one');
ok wait_for('after the unmakeable one'), 'the room goes on past a change that makes no event';
like change_of($bad), qr/^1\|true\|its author is not in the users view$/,
     'given up on at the first attempt, with the reason';
like $ngx->error_log, qr/change \d+ of room "!general:module.test" makes no event, given up on: its author/,
     'logged, naming the room';

# --- Postgres restarted while events are owed: none lost, none twice ------------

$fake->configure('remote.test', { behaviour => {
    'PUT /_matrix/federation/v1/send/' => { status => 500 } } });
$fake->reset;
post(2, "before the restart $_") for 1 .. 3;
my @tries;
for (1 .. 100) {
    @tries = $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
    last if @tries;
    sleep 0.1;
}
ok scalar @tries, 'the receiver refuses the first try';
$pg->stop;
sleep 1;
$pg->start_again;
post(2, 'after the restart');
$fake->configure('remote.test', { behaviour => undef });
ok wait_for('after the restart', 60), 'after a Postgres restart the feed and the sender go on';
is_deeply [grep { /the restart/ } received()],
          [(map { "before the restart $_" } 1 .. 3), 'after the restart'],
          'every message delivered, in order, once';

# --- housekeeping: received transactions older than a day ----------------------

my $now = int(Time::HiRes::time() * 1000);
$pg->psql(qq{INSERT INTO matrix.received_transactions (origin, txn_id, response, received_ts)
             VALUES ('remote.test', 'old', '{}', @{[ $now - 2 * 86400000 ]}),
                    ('remote.test', 'fresh', '{}', $now)});
$ngx->reload;
my $left;
for (1 .. 100) {
    $left = $pg->psql(q{SELECT string_agg(txn_id, ',' ORDER BY txn_id)
                          FROM matrix.received_transactions
                         WHERE txn_id IN ('old', 'fresh')});
    last if $left eq 'fresh';
    sleep 0.1;
}
is $left, 'fresh', 'a received transaction older than a day is pruned, a fresh one kept';

unlike $ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no crash, no alert';

done_testing;
