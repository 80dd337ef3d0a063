# The pool's hard cases, each once a defect found in review: a COPY that
# would spin the worker, a lease granted (and released) at once, a lease
# whose connection dies between statements, libpq reopening a socket with
# the same number, subscribing from inside a notification, the schema's
# back-off, server notices, and a worker told to stop while connecting.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);

use MatrixPg;
use MatrixNginx;
use MatrixTest;
use MatrixPgtest;

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'MATRIX_PGTEST_MODULE not built'
    unless $ENV{MATRIX_PGTEST_MODULE} && -f $ENV{MATRIX_PGTEST_MODULE};

$ENV{TEST_NGINX_LOAD_MODULES} .= " $ENV{MATRIX_PGTEST_MODULE}";

my $pg = MatrixPg->start;

$pg->silo_users;
$pg->psql('CREATE TABLE public.ledger (id serial PRIMARY KEY, note text)');


my $PROFILE = '/_matrix/client/v3/profile/@alice:example.org';
my $ALERTS = qr/\[(alert|crit|emerg)\]/;


# --- COPY, a lease granted at once, a lease that loses its connection ---------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=1 timeout=3s');

    my ($body, $t) = sql($ngx, sql => 'COPY (SELECT 1) TO STDOUT');
    like $body, qr/^1: connection lost: COPY is not supported/,
        'COPY is refused, not looped on';
    my ($status) = $ngx->get('/_matrix/key/v2/server');
    is $status, 200, 'and the worker is free';
    is sql($ngx, sql => 'SELECT 1'), "1: ok\n  1\n", 'the pool goes on';

    is sql($ngx, noop => 1), "lease: ok, released unused\n",
        'a lease granted from a free connection is announced from the '
        . 'event loop, so the request can end in its handler';
    is sql($ngx, noop => 1), "lease: ok, released unused\n", 'again';
    is sql($ngx, sql => 'SELECT 2'), "1: ok\n  2\n",
        'and the released connection serves';

    $body = sql($ngx, tx => 1, pause => 700, sql => 'BEGIN',
                sql2 => "INSERT INTO public.ledger (note) VALUES ('first'); "
                        . "SET LOCAL idle_in_transaction_session_timeout = "
                        . "'200ms'",
                sql3 => "INSERT INTO public.ledger (note) VALUES ('second')",
                sql4 => 'COMMIT');
    like $body, qr/^lease: ok\n1: ok\n2: ok\n3: connection lost/,
        'a lease whose connection died between statements says so';
    is $pg->psql('SELECT count(*) FROM public.ledger'), '0',
        'and nothing ran outside the transaction';
    is sql($ngx, sql => 'SELECT 3'), "1: ok\n  3\n", 'the pool reconnects';

    $ngx->stop;
    unlike $ngx->error_log, $ALERTS, 'no alerts';
    unlike $ngx->error_log, qr/request already closed|count is zero/,
        'no request ended twice';
}


# --- libpq reopens its socket: the same number, another socket -------------

{
    # prefer-standby: libpq connects, sees a primary, closes, and connects
    # again; the new socket gets the number the old one had
    my $ngx = pgtest_nginx($pg,
        conninfo => $pg->conninfo . ' target_session_attrs=prefer-standby');

    my $ok = 0;
    for (1 .. 5) {
        $ok++ if ($ngx->get($PROFILE))[0] == 200;
    }
    is $ok, 5, 'a connection whose socket libpq replaced while connecting';

    $pg->psql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = 'ngx_http_matrix_module'});
    ok eventually(10, sub { ($ngx->get($PROFILE))[0] == 200 }),
        'and reconnections after the server dropped them';

    $ngx->stop;
    unlike $ngx->error_log, qr/epoll_ctl|cannot watch the socket/,
        'epoll follows the new socket';
    unlike $ngx->error_log, $ALERTS, 'no alerts';
}


# --- subscribing from inside a notification; notices -----------------------

{
    my $ngx = pgtest_nginx($pg, http => "    matrix_pgtest_listen early_channel;\n");

    my $notes = '';
    my $note = sub { $notes .= ($ngx->get('/notes'))[2]; };

    ok eventually(5, sub { $note->(); $notes =~ /\(re\)subscribed/ }),
        'listening';

    $pg->psql(q{NOTIFY early_channel, 'subscribe'});
    ok eventually(5, sub { $note->(); $notes =~ /early_channel:subscribe/ }),
        'a notification whose handler subscribes to another channel';

    ok eventually(10, sub {
        $pg->psql(q{NOTIFY late_channel, 'late'});
        $note->();
        $notes =~ /late_channel:late/;
    }), 'the new channel is heard';

    $pg->psql(q{NOTIFY early_channel, 'still'});
    ok eventually(5, sub { $note->(); $notes =~ /early_channel:still/ }),
        'and the first one still';

    is sql($ngx, sql => q{DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; }
                        . q{RAISE WARNING 'careful'; END $$}),
       "1: ok\n", 'a statement raising a notice and a warning';

    $ngx->stop;

    my $log = $ngx->error_log;
    like $log, qr/\[info\] .*matrix postgres: NOTICE:  hello from plpgsql/,
        'server notices go to the error log at info';
    like $log, qr/\[warn\] .*matrix postgres: WARNING:  careful/,
        'warnings at warn';
    # nginx points stderr at the error log: libpq's own printing would
    # show there as a bare line
    unlike $log, qr/^NOTICE:  hello from plpgsql/m,
        'not printed by libpq to stderr';
    unlike $log, $ALERTS, 'no alerts';
}


# --- the schema's retries back off ---------------------------------------------

{
    my $ngx = pgtest_nginx($pg, http => "    matrix_schema nowhere;\n"
                                  . "    matrix_migrate off;\n");
    sleep 6.5;
    $ngx->stop;

    my $n = () = $ngx->error_log =~ /\[alert\].*schema "nowhere" cannot be read/g;
    cmp_ok $n, '<=', 4, "an unmigrated schema is tried again with a growing "
        . "back-off ($n times in 6.5s)";
    cmp_ok $n, '>=', 2, 'but tried again';
}


# --- told to stop while connecting ----------------------------------------------

{
    my $ngx = pgtest_nginx($pg,
        conninfo => 'hostaddr=192.0.2.1 port=5432 dbname=x user=x',
        pool => 'max=2 timeout=30s');

    my $s = $ngx->send_get($PROFILE);
    sleep 0.5;

    kill 'TERM', $ngx->{pid};
    my $gone = eventually(10, sub { waitpid($ngx->{pid}, WNOHANG) == $ngx->{pid} });
    delete $ngx->{pid} if $gone;

    ok $gone, 'nginx stops at once while a connection is being made';
    unlike $ngx->error_log, qr/open socket|aborting/,
        'and closes that connection on the way out';
}

done_testing;
