# Delivery of the silo's writes (silo_outbox) under load, as the reference
# silo (examples/silo) gets them: a backlog of one room goes in order, a
# write the silo fails holding back the room's later ones until it is
# retried, none twice; and rooms go side by side, one the silo is slow
# with not holding back another.
#
# What the silo sees is recorded by a trigger on its chat.messages (the
# order rows are inserted in, by a sequence: a write the silo fails rolls
# back with its row); the same trigger fails the write of "backlog 37"
# once (the silo answers 500) and makes the writes of the rooms listed in
# chat.slow_rooms take a second.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);

use MatrixRoomTest;

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 1);
my ($pg, $fake, $ngx) = ($t->pg, $t->fake, $t->ngx);

sub eventually { $t->eventually(@_) }

my $CAROL = '@carol:remote.test';
my $GENERAL = '!general:module.test';
my $RANDOM = '!random:module.test';
my $OUTBOX = 'SELECT count(*) FROM matrix.silo_outbox';

# carol in General, dave in Random: the silo serialises writes of one
# sender (its users row), which is not what is measured here
my $DAVE = '@dave:remote.test';
my %sender = ($GENERAL => $CAROL, $RANDOM => $DAVE);
my %auth;
for my $room ($GENERAL, $RANDOM) {
    my $join = $t->remote_join($sender{$room}, $room);
    ok $join, "$sender{$room} joins $room";
    $auth{$room} = [$t->state_id($room, 'm.room.create', ''),
                    $t->state_id($room, 'm.room.power_levels', ''), $join];
}
is eventually($OUTBOX, 0), 0, 'their joins delivered';

$pg->psql(q{
    CREATE TABLE chat.arrivals (n bigserial PRIMARY KEY, event_id text NOT NULL,
                                room_id bigint NOT NULL, source text,
                                at double precision NOT NULL);
    CREATE TABLE chat.slow_rooms (room_id bigint PRIMARY KEY);
    CREATE SEQUENCE chat.fail_once;
    CREATE FUNCTION chat.arrive() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF NEW.source = 'backlog 37' AND nextval('chat.fail_once') = 1 THEN
            RAISE EXCEPTION 'the 37th fails once';
        END IF;
        IF EXISTS (SELECT 1 FROM chat.slow_rooms s WHERE s.room_id = NEW.room_id) THEN
            PERFORM pg_sleep(1);
        END IF;
        INSERT INTO chat.arrivals (event_id, room_id, source, at)
        VALUES (NEW.matrix_event_id, NEW.room_id, NEW.source,
                extract(epoch FROM clock_timestamp()));
        RETURN NEW;
    END
    $fn$;
    CREATE TRIGGER arrive BEFORE INSERT ON chat.messages
        FOR EACH ROW EXECUTE FUNCTION chat.arrive();
});

# N messages in ROOM, each on the one before, from the room's head
sub chain {
    my ($room, $prefix, $n) = @_;
    my ($first, $id) = $t->event(room_id => $room, sender => $sender{$room},
        auth => $auth{$room}, content => { msgtype => 'm.text', body => "$prefix 1" });
    my @pdus = ($first);
    for my $i (2 .. $n) {
        my $s = $fake->sign_event('remote.test', '10', {
            type => 'm.room.message', room_id => $room, sender => $sender{$room},
            origin => 'remote.test', origin_server_ts => int(time() * 1000),
            depth => $pdus[-1]{depth} + 1,
            prev_events => [$id],
            auth_events => $auth{$room},
            content => { msgtype => 'm.text', body => "$prefix $i" } });
        push @pdus, $s->{event};
        $id = $s->{event_id};
    }
    return @pdus;
}

# PDUS in transactions of 50; all must be accepted
sub send_all {
    my ($name, @pdus) = @_;
    my $ok = 1;
    while (my @txn = splice @pdus, 0, 50) {
        my ($st, $json) = $t->send_txn(\@txn);
        $ok &&= $st == 200 && !grep { %$_ } values %{ $json->{pdus} };
    }
    ok $ok, "$name: accepted";
}

sub arrived {
    my ($where) = @_;
    return scalar $pg->psql(qq{SELECT count(*) FROM chat.arrivals WHERE $where});
}

# --- a backlog of one room, the silo failing one write once -------------------

$t->silo_stop;
my @backlog = chain($GENERAL, 'backlog', 100);
send_all('a backlog of 100 messages in General, the silo away', @backlog);
is $pg->psql($OUTBOX), 100, 'all 100 queued';
# as if the silo had been away a while: all due now, none tried yet
$pg->psql('UPDATE matrix.silo_outbox SET next_attempt_ts = 0, attempts = 0');
$t->silo_start;

is eventually(q{SELECT count(*) FROM chat.arrivals WHERE source LIKE 'backlog %'}, 100), 100,
   'the silo has all 100' or diag $ngx->error_log;
is $pg->psql(q{SELECT string_agg(source, ',' ORDER BY n) FROM chat.arrivals
                WHERE source LIKE 'backlog %'}),
   join(',', map { "backlog $_" } 1 .. 100),
   'once each, in order, the 37th after its retry, none after it before it';
my @gap = split /\|/, $pg->psql(q{SELECT (SELECT at FROM chat.arrivals WHERE source = 'backlog 37')
                                       - (SELECT at FROM chat.arrivals WHERE source = 'backlog 36')});
cmp_ok $gap[0], '>=', 0.8, 'the 37th went after a back-off of about a second (' . sprintf('%.2f s', $gap[0]) . ')';
my @retries = $ngx->error_log =~ /message of event \d+ not written, will retry: answered 500/g;
is scalar(@retries), 1, 'one write failed, once';
is eventually($OUTBOX, 0), 0, 'the outbox is empty';
is $pg->psql(q{SELECT count(*) FROM chat.messages WHERE source LIKE 'backlog %'}), 100,
   'one row each in the silo';

# --- two rooms side by side, the silo slow with one ----------------------------

$pg->psql('INSERT INTO chat.slow_rooms VALUES (1)');     # General: a second a write
my @slow = chain($GENERAL, 'slow', 3);
my @fast = chain($RANDOM, 'fast', 20);
send_all('3 messages in General, which the silo takes a second each for', @slow);
send_all('then 20 in Random', @fast);

is eventually(q{SELECT count(*) FROM chat.arrivals WHERE source LIKE 'fast %'}, 20), 20,
   'the silo has Random\'s 20';
cmp_ok arrived(q{source LIKE 'slow %'}), '<', 3,
   'before General\'s 3: Random\'s writes did not wait for General\'s'
    or diag $pg->psql(q{SELECT string_agg(source || '@' || round(at::numeric % 100, 2), ' ' ORDER BY n)
                          FROM chat.arrivals WHERE source NOT LIKE 'backlog %'});
is eventually(q{SELECT count(*) FROM chat.arrivals WHERE source LIKE 'slow %'}, 3), 3,
   'then General\'s';
is $pg->psql(q{SELECT string_agg(source, ',' ORDER BY n) FROM chat.arrivals
                WHERE source LIKE 'slow %'}),
   'slow 1,slow 2,slow 3', 'General\'s in order';
is $pg->psql(q{SELECT string_agg(source, ',' ORDER BY n) FROM chat.arrivals
                WHERE source LIKE 'fast %'}),
   join(',', map { "fast $_" } 1 .. 20), 'Random\'s in order';
is eventually($OUTBOX, 0), 0, 'the outbox is empty';

unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]|segmentation/i, 'no alerts or crashes';

done_testing;
