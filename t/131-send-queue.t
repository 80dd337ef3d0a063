# The send queue's housekeeping (src/ngx_http_matrix_sender.c,
# sql/005_fanout.sql, sql/012_sender.sql): the floor moves past a server
# that is owed nothing, so that the outbox is trimmed while one server
# is quiet and another busy; and a worker that exits after a reload but
# lives on (a request it still serves) gives the sending lock up at
# once, instead of holding the cluster's federation until it is gone.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;

use MatrixRoomTest;
use Time::HiRes qw(sleep);

plan skip_all => MatrixRoomTest::skip_reason() if MatrixRoomTest::skip_reason();

my $t = MatrixRoomTest->start(names => ['a.test', 'b.test'], workers => 1);
my ($pg, $fake) = ($t->pg, $t->fake);
$fake->configure_global({ keys => $t->verify_keys });

ok $t->remote_join('@al:a.test', '!general:module.test'), 'a.test joins General';
ok $t->remote_join('@bo:b.test', '!random:module.test'), 'b.test joins Random';

sub author {
    my ($room) = @_;
    return scalar $pg->psql(qq{SELECT u.id FROM chat.users u
        JOIN matrix.room_state s ON s.state_key = '\@' || u.handle || ':module.test'
        JOIN matrix.matrix_rooms r ON r.room_nid = s.room_nid
       WHERE r.room_id = '$room' AND s.membership = 'join' ORDER BY u.id LIMIT 1});
}
my ($u1, $u2) = (author('!general:module.test'), author('!random:module.test'));

sub post {
    my ($room, $user, $text) = @_;
    $pg->psql(qq{INSERT INTO chat.messages (room_id, user_id, source)
                 VALUES ($room, $user, '$text')});
}

sub arrived {
    my ($server, $body, $secs) = @_;
    for (1 .. ($secs // 15) * 10) {
        return 1 if grep { ($_->{content}{body} // '') eq $body }
                    map { @{ $_->{json}{pdus} || [] } }
                    grep { ($_->{status} // 0) == 200 && ($_->{server} // "") eq $server }
                    $fake->requests(method => 'PUT', path => '/_matrix/federation/v1/send/');
        sleep 0.1;
    }
    return 0;
}

# --- a quiet server does not hold the outbox ------------------------------------

post(1, $u1, 'to a, once');
ok arrived('a.test', 'to a, once'), 'a.test has its message';
post(2, $u2, "to b $_") for 1 .. 20;
ok arrived('b.test', 'to b 20'), 'b.test has its twenty';

my ($floor, $left);
for (1 .. 50) {
    ($floor, $left) = split /\|/, $pg->psql(q{SELECT (SELECT seq FROM matrix.federation_floor),
        (SELECT count(*) FROM matrix.federation_outbox)});
    last if $left == 0;
    sleep 0.2;
}
is $left, 0, "the outbox is trimmed though a.test was sent nothing since (floor $floor)";
is $pg->psql('SELECT count(*) FROM matrix.destinations'), 0, 'no destination has a row';

# --- a row the owner did not write (a former owner's, late) does not stay --------

$pg->psql(q{INSERT INTO matrix.destinations (server_name, last_sent, failures, retry_at,
                                             failing_since, last_error)
            VALUES ('a.test', 0, 3, 0, 1, 'written late by a former owner')});
post(2, $u2, 'while a stale row is there');
ok arrived('b.test', 'while a stale row is there'), 'b.test has the next message';
for (1 .. 250) {
    ($floor, $left) = split /\|/, $pg->psql(q{SELECT
        (SELECT count(*) FROM matrix.destinations),
        (SELECT count(*) FROM matrix.federation_outbox)});
    last if $floor == 0 && $left == 0;
    sleep 0.1;
}
is "$floor|$left", '0|0', 'the stale row is taken in and goes with the floor; the outbox is trimmed';
like $t->ngx->error_log, qr/destination a\.test has a row this worker did not write: taken in/,
     'logged';

# --- an exiting worker gives the lock up -------------------------------------------

# a request that has not finished its headers keeps the old worker alive
# after the reload, for client_header_timeout (60 s)
my $hold = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $t->ngx->port)
    or die "connect: $!";
print $hold "GET /held HTTP/1.1\r\nHost: localhost\r\n";
sleep 0.3;

# (not $ngx->reload: it waits for the old workers to be gone)
my %old = map { $_ => 1 } $t->ngx->worker_pids;
kill 'HUP', $t->ngx->{pid};
for (1 .. 100) {
    last if grep { !$old{$_} } $t->ngx->worker_pids;
    sleep 0.05;
}
ok((grep { !$old{$_} } $t->ngx->worker_pids), 'reloaded: a new worker');
ok((grep { $old{$_} } $t->ngx->worker_pids), 'the old one lives on, serving the held request');
sleep 1;
my $t0 = Time::HiRes::time();
post(2, $u2, 'after the reload');
ok arrived('b.test', 'after the reload', 20), 'a message after the reload goes out';
cmp_ok Time::HiRes::time() - $t0, '<', 15,
       'well before the old worker, still serving a request, is gone (60 s)';
like $t->ngx->error_log, qr/this worker is exiting: it no longer sends/,
     'the old worker said it gave the lock up';
close $hold;

unlike $t->ngx->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no crash, no alert';

done_testing;
