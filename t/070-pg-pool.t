# The Postgres pool against a real server: statements, prepared
# statements, errors, a slow statement beside fast ones on one worker,
# pool exhaustion, statement timeouts, transactions and leases, LISTEN,
# work with no request, the database going away and coming back.
#
# The test-only module t/pgtest drives the pool's interface directly;
# /_matrix/client/v3/profile is the module's own endpoint on the silo's
# users view.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use MatrixPg;
use MatrixNginx;
use MatrixTest;
use MatrixPgtest;

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'MATRIX_PGTEST_MODULE not built'
    unless $ENV{MATRIX_PGTEST_MODULE} && -f $ENV{MATRIX_PGTEST_MODULE};

$ENV{TEST_NGINX_LOAD_MODULES} .= " $ENV{MATRIX_PGTEST_MODULE}";

my $pg = MatrixPg->start;

$pg->psql(<<'SQL');
CREATE SCHEMA matrix_silo;
CREATE TABLE matrix_silo.users (user_id text PRIMARY KEY,
    localpart text UNIQUE NOT NULL, display_name text, avatar_url text,
    deactivated boolean NOT NULL DEFAULT false);
INSERT INTO matrix_silo.users VALUES
    ('1', 'alice', 'Alice', 'mxc://example.org/a', false),
    ('2', 'bob', 'Bob', 'https://silo.example/bob.png', false),
    ('3', 'gone', 'Gone', NULL, true);
CREATE TABLE public.ledger (id serial PRIMARY KEY, note text);
SQL


my $PROFILE = '/_matrix/client/v3/profile/@alice:example.org';


# --- statements -------------------------------------------------------------

{
    my $ngx = pgtest_nginx($pg);

    is sql($ngx, sql => 'SELECT 1, NULL, \'x\''), "1: ok\n  1|NULL|x\n",
        'a one-off statement';
    is sql($ngx, sql => 'SELECT $1::int + $2::int', p1 => 40, p2 => 2),
        "1: ok\n  42\n", 'parameters';
    is sql($ngx, sql => 'SELECT $1', p1 => "it's \"quoted\"; DROP TABLE x"),
        "1: ok\n  it's \"quoted\"; DROP TABLE x\n",
        'parameters are values, never SQL';
    is sql($ngx, stmt => 'echo', p1 => 'first'), "1: ok\n  first\n",
        'a prepared statement, prepared on first use';
    is sql($ngx, stmt => 'echo', p1 => 'again'), "1: ok\n  again\n",
        'and executed again without preparing';
    like sql($ngx, sql => 'SELECT * FROM no_such_table'),
        qr/^1: SQL error: ERROR:  relation "no_such_table" does not exist/,
        'an SQL error comes back as one';
    is sql($ngx, sql => 'SELECT 1'), "1: ok\n  1\n",
        'and the connection is fine after it';
    is sql($ngx, sql => 'SELECT 1; SELECT 2'), "1: ok\n  2\n",
        'several statements in one: the last result';
    like sql($ngx, sql => 'SELECT current_setting(\'search_path\')'),
        qr/^  "matrix", "matrix_silo"$/m,
        'the session searches the module\'s schema, then the silo\'s';
    like sql($ngx, sql => 'SELECT application_name FROM pg_stat_activity '
                          . 'WHERE pid = pg_backend_pid()'),
        qr/^  ngx_http_matrix_module$/m, 'connections are named';

    my ($status, $head, $body) = $ngx->get($PROFILE);
    is $status, 200, 'profile: 200';
    is $body, '{"avatar_url":"mxc://example.org/a","displayname":"Alice"}',
        'profile: from the silo view';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@bob:example.org');
    is $body, '{"displayname":"Bob"}', 'profile: no non-mxc avatar';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@bob:example.org/avatar_url');
    is $status, 404, 'profile field: missing is 404';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@gone:example.org');
    is $status, 404, 'profile: deactivated is 404';
    like $body, qr/"errcode":"M_NOT_FOUND"/, 'with M_NOT_FOUND';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@alice:elsewhere.org');
    is $status, 404, 'profile: another server\'s user is not looked up';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/alice');
    is $status, 400, 'profile: not a user ID';
    like $body, qr/"errcode":"M_INVALID_PARAM"/, 'with M_INVALID_PARAM';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@%27%3BDROP:example.org');
    is $status, 404, 'profile: a localpart this server never issues';
    like $body, qr/"errcode":"M_NOT_FOUND"/, 'is not found';
    ($status, $head, $body) = $ngx->get(
        '/_matrix/client/v3/profile/@Alice:example.org');
    is $status, 404, 'profile: nor an upper-case one';

    $ngx->stop;
    unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
}


# --- one worker: a slow statement does not hold up the others -------------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=4 timeout=10s');

    $ngx->get($PROFILE);      # connections up, statements prepared

    my $slow = $ngx->send_get(sql_url(stmt => 'sleep', p1 => 2));
    sleep 0.2;

    my $t0 = time;
    my $ok = 0;
    for (1 .. 20) {
        my ($status) = $ngx->get($PROFILE);
        $ok++ if $status == 200;
    }
    my $fast = time - $t0;

    my ($status, undef, $body, $t) = $ngx->read_response($slow);

    is $ok, 20, 'twenty profile requests while a statement sleeps';
    cmp_ok $fast, '<', 1.0, "answered in ${\ sprintf '%.3f', $fast}s, "
        . 'not after the sleeping one';
    is $body, "1: ok\n  |slept\n", 'the slow statement finishes';
    cmp_ok $t, '>=', 1.9, 'after its two seconds';

    $ngx->stop;
}


# --- pool exhaustion: waiters queue, then time out --------------------------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=1 timeout=1500ms');

    sql($ngx, sql => 'SELECT 1');

    my $a = $ngx->send_get(sql_url(stmt => 'sleep', p1 => '0.5'));
    sleep 0.1;
    my $b = $ngx->send_get(sql_url(sql => 'SELECT 2'));

    my (undef, undef, $body_b, $tb) = $ngx->read_response($b);
    my (undef, undef, $body_a) = $ngx->read_response($a);

    is $body_a, "1: ok\n  |slept\n", 'max=1: the first statement runs';
    is $body_b, "1: ok\n  2\n", 'the second waits for the connection';
    cmp_ok $tb, '>=', 0.3, 'and runs after the first';

    my $c = $ngx->send_get(sql_url(stmt => 'sleep', p1 => 3, timeout => 5000));
    sleep 0.1;
    my ($body_d, $td) = sql($ngx, sql => 'SELECT 4');
    like $body_d, qr/^1: timed out: no free connection in time$/,
        'a waiter times out when the pool stays busy';
    cmp_ok $td, '>=', 1.3, "after the pool's timeout";
    cmp_ok $td, '<', 2.5, 'not much later (' . sprintf('%.2f', $td) . 's)';

    my ($status, undef, $body_c) = $ngx->read_response($c);
    is $body_c, "1: ok\n  |slept\n", 'the busy statement still finishes';
    is sql($ngx, sql => 'SELECT 5'), "1: ok\n  5\n", 'and the pool serves again';

    $ngx->stop;
    like $ngx->error_log, qr/no free connection in 1500ms \(max=1\)/,
        'the exhaustion is logged with the pool size';
}


# --- statement timeout: the connection goes, the server stops too ----------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=2 timeout=10s');

    my ($body, $t) = sql($ngx, stmt => 'sleep', p1 => 30, timeout => 500);
    like $body, qr/^1: timed out/, 'a statement past its timeout';
    cmp_ok $t, '<', 1.5, 'is answered at the timeout';

    ok eventually(5, sub {
        $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                  . "'SELECT pg_sleep%' AND state = 'active'") eq '0'
    }), 'and the server gives up the abandoned statement';

    is sql($ngx, sql => 'SELECT 6'), "1: ok\n  6\n", 'the pool goes on';

    $ngx->stop;
}


# --- transactions on a lease ------------------------------------------------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=1 timeout=3s');

    is sql($ngx, tx => 1, sql => 'BEGIN',
           sql2 => "INSERT INTO public.ledger (note) VALUES ('kept')",
           sql3 => 'COMMIT'),
       "lease: ok\n1: ok\n2: ok\n3: ok\n", 'a committed transaction';

    is sql($ngx, tx => 1, leave => 1, sql => 'BEGIN',
           sql2 => "INSERT INTO public.ledger (note) VALUES ('left open')"),
       "lease: ok\n1: ok\n2: ok\n",
       'a transaction left open when its request ends';

    like sql($ngx, tx => 1, sql => 'BEGIN',
             sql2 => "INSERT INTO public.ledger (note) VALUES ('failed')",
             sql3 => 'SELECT 1/0'),
         qr/^lease: ok\n1: ok\n2: ok\n3: SQL error: ERROR:  division by zero/,
         'a transaction that fails';

    is sql($ngx, sql => 'SELECT txid_current_if_assigned() IS NULL, '
                        . 'current_setting(\'transaction_isolation\')'),
       "1: ok\n  t|read committed\n",
       'max=1: the same connection comes back outside any transaction';

    is $pg->psql('SELECT note FROM public.ledger ORDER BY id'), 'kept',
        'only the committed row is there: the others were rolled back';

    is sql($ngx, tx => 1, sql => 'SELECT pg_backend_pid() = pg_backend_pid()',
           sql2 => 'SELECT 2'),
       "lease: ok\n1: ok\n  t\n2: ok\n  2\n", 'a lease without a transaction';

    $ngx->stop;
    unlike $ngx->error_log, qr/\[(alert|crit)\]/, 'no alerts';
}


# --- LISTEN/NOTIFY and work with no request ---------------------------------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=2 timeout=2s', http => <<'EOF');
    matrix_pgtest_listen mx_test_channel;
    matrix_pgtest_listen "another one";
    matrix_pgtest_timer 200ms "SELECT 1";
EOF

    my $notes = '';
    ok eventually(5, sub {
        $notes .= ($ngx->get('/notes'))[2];
        $notes =~ /\(re\)subscribed/;
    }), 'listening';

    $pg->psql(q{NOTIFY mx_test_channel, 'hello'; NOTIFY "another one", 'x'});
    ok eventually(5, sub {
        $notes .= ($ngx->get('/notes'))[2];
        $notes =~ /mx_test_channel:hello/ && $notes =~ /another one:x/;
    }), 'notifications arrive, on a channel needing quotes too';

    $pg->psql(q{SELECT pg_notify('mx_test_channel', 'via ' || 'pg_notify')});
    ok eventually(5, sub {
        $notes .= ($ngx->get('/notes'))[2];
        $notes =~ /mx_test_channel:via pg_notify/;
    }), 'from pg_notify() too';

    ok eventually(5, sub { $ngx->error_log =~ /pgtest timer: ok, 1 rows/ }),
        'a timer runs statements with no request';

    # the database goes away and comes back

    $pg->stop;

    my ($status, $head, $body, $t) = $ngx->get($PROFILE);
    is $status, 503, 'database down: 503';
    like $body, qr/^\{"errcode":"M_UNKNOWN","error":"The database is unavailable/,
        'with a Matrix error';
    like $head, qr/^Retry-After: \d+/mi, 'and Retry-After';
    cmp_ok $t, '<', 1, 'at once';

    my $slowest = 0;
    for (1 .. 10) {
        my ($s, undef, undef, $t) = $ngx->get($PROFILE);
        $slowest = $t if $t > $slowest;
    }
    cmp_ok $slowest, '<', 1, 'every request while down is answered at once';

    ($status, $head, $body) = $ngx->get('/_matrix/key/v2/server');
    is $status, 200, 'what needs no database is served meanwhile';

    ok eventually(3, sub {
        $ngx->error_log =~ /pgtest timer: database unavailable/
    }), 'the timer sees the database down';

    $notes = '';
    $ngx->get('/notes');
    $pg->start_again;

    ok eventually(15, sub { ($ngx->get($PROFILE))[0] == 200 }),
        'requests are served again once the database is back';

    ok eventually(15, sub {
        $notes .= ($ngx->get('/notes'))[2];
        $notes =~ /\(re\)subscribed/;
    }), 'the listener subscribes again, and says so';

    $pg->psql(q{NOTIFY mx_test_channel, 'after'});
    ok eventually(5, sub {
        $notes .= ($ngx->get('/notes'))[2];
        $notes =~ /mx_test_channel:after/;
    }), 'notifications arrive again';

    my $runs = (($ngx->get('/notes'))[2] =~ /timer runs: (\d+)/)[0];
    sleep 1;
    my $later = (($ngx->get('/notes'))[2] =~ /timer runs: (\d+)/)[0];
    cmp_ok $later, '>', $runs, 'the timer goes on';
    like substr($ngx->error_log, -4000), qr/pgtest timer: ok/,
        'and succeeds again';

    $ngx->stop;

    my $log = $ngx->error_log;
    unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
    like $log, qr/matrix postgres: connected again/, 'the recovery is logged';
}


# --- restart under load ------------------------------------------------------

{
    my $ngx = pgtest_nginx($pg, pool => 'max=4 timeout=2s', workers => 2);

    ok eventually(5, sub { ($ngx->get($PROFILE))[0] == 200 }), 'up';

    my (%seen, $bad);
    my $stop_at = time + 1;
    my $restarted = 0;
    my $end = time + 8;

    while (time < $end) {
        my @s = map { $ngx->send_get($PROFILE) } 1 .. 8;
        for my $s (@s) {
            my ($status, undef, $body, $t) = $ngx->read_response($s, 10);
            $seen{$status}++;
            $bad++ if $status != 200 && $status != 503;
            $bad++ if $t > 5;
        }

        if (!$restarted && time > $stop_at) {
            $pg->stop('immediate');
            sleep 0.5;
            $pg->start_again;
            $restarted = 1;
        }
    }

    ok !$bad, 'under load and a crash-restart of the database, every '
        . 'request gets 200 or 503, quickly: '
        . join ', ', map { "$_ x$seen{$_}" } sort keys %seen;
    ok eventually(10, sub { ($ngx->get($PROFILE))[0] == 200 }),
        'and 200 once it is back';

    my $ok = 0;
    $ok += ($ngx->get($PROFILE))[0] == 200 for 1 .. 20;
    is $ok, 20, 'on both workers';

    $ngx->stop;
    unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
}


# --- unreachable: a TCP address that never answers --------------------------

{
    my $ngx = pgtest_nginx($pg,
        conninfo => 'hostaddr=192.0.2.1 port=5432 dbname=x user=x',
        pool => 'max=2 timeout=700ms');

    my ($status, undef, $body, $t) = $ngx->get($PROFILE);
    is $status, 503, 'an address that never answers: 503';
    cmp_ok $t, '<', 2, 'within the timeout';

    ($status, undef, undef, $t) = $ngx->get($PROFILE);
    is $status, 503, 'again';
    cmp_ok $t, '<', 2, 'quickly';

    ($status) = $ngx->get('/_matrix/key/v2/server');
    is $status, 200, 'the key server is unaffected';

    $ngx->stop;
}

done_testing;
