# "matrix-tool migrate" and the module's own schema (sql/NNN_name.sql,
# docs/storage.md): fresh and repeated runs, another schema, --status and
# --print, concurrent migrators, a database from the future, a failing
# migration, and the silo change feed's trigger with its NOTIFY, all on a
# throwaway PostgreSQL cluster (t/lib/MatrixPg.pm).
#
#   make tool
#   MATRIX_TOOL=$PWD/build/matrix-tool MATRIX_BUILD_DIR=$PWD/build \
#       prove -I t/runner -I t/lib t/050-migrate.t

use strict;
use warnings;

use Test::More;
use File::Basename qw(dirname);
use IPC::Run qw(start finish timeout);

use MatrixTest qw(tool write_file);
use MatrixPg;

plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};
plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();


my $SQL_DIR = dirname(__FILE__) . '/../sql';

# what the tool should know: sql/NNN_name.sql in order
my @MIGRATIONS = map { m{((\d{3})_\w+)\.sql\z} ? [$2 + 0, $1] : () }
    sort glob("$SQL_DIR/[0-9][0-9][0-9]_*.sql");
my $LATEST = $MIGRATIONS[-1][0];
my $FIRST = $MIGRATIONS[0][1];
my $N = @MIGRATIONS;
my $VERSIONS = join ',', map { "$_->[0]:$_->[1]" } @MIGRATIONS;

my @TABLES = sort qw(events forward_extremities invites matrix_rooms
                received_transactions room_state
                schema_migrations server_key_json server_keys silo_changes
                silo_localparts silo_outbox silo_reactions
                destinations federation_outbox federation_floor);

my $pg = MatrixPg->start;
my $CI = $pg->conninfo;


# one value; $pg->psql in list context gives (ok, output, stderr)
sub sql { return scalar $pg->psql(@_) }

sub tables_in {
    my ($schema) = @_;

    return join ' ', split /\n/, sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = '$schema' "
        . "ORDER BY 1");
}

sub versions_in {
    my ($schema) = @_;

    return join ',', split /\n/, sql(
        qq{SELECT version || ':' || name FROM "$schema".schema_migrations }
        . 'ORDER BY version');
}

sub migrate_ok {
    my ($args, $out_re, $name) = @_;
    my ($rc, $out, $err) = tool(['migrate', @$args]);

    ok($rc eq '0' && $out =~ $out_re, $name)
        or diag("exit $rc\nstdout: $out\nstderr: $err");

    return $out;
}


# the migrations themselves: what the runner relies on

for my $m (@MIGRATIONS) {
    my $file = "$SQL_DIR/$m->[1].sql";
    open my $fh, '<', $file or die "$file: $!";
    my $text = do { local $/; <$fh> };

    # function bodies and comments may say BEGIN, END or matrix.
    $text =~ s/(\$\w*\$).*?\1//gs;
    $text =~ s/--[^\n]*//g;

    ok($text !~ /\b(?:BEGIN|COMMIT|ROLLBACK|END|START\s+TRANSACTION)\s*;/i
       && $text !~ /\bmatrix\s*\./i
       && $text !~ /\bTABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?
                    (?:users|rooms|room_members|messages)\b/xi,
       "$m->[1]: no transaction control, no schema name, no silo view name");
}


# usage and connection errors

{
    my ($rc, $out, $err) = tool(['--help']);
    like($out, qr/^  migrate \[--schema NAME\]/m, 'usage lists migrate');

    ($rc, $out, $err) = tool(['migrate']);
    ok($rc eq '2' && $err =~ /migrate: CONNINFO is required/,
       'no CONNINFO: usage error') or diag("exit $rc: $err");

    ($rc, $out, $err) = tool(['migrate', '--status', '--print', $CI]);
    ok($rc eq '2' && $err =~ /exclude each other/,
       '--status with --print: usage error') or diag("exit $rc: $err");

    ($rc, $out, $err) = tool(['migrate', '--schema', 'x' x 64, $CI]);
    ok($rc eq '2' && $err =~ /--schema must be 1 to 63 bytes/,
       'a schema name the server would cut: usage error')
        or diag("exit $rc: $err");

    ($rc, $out, $err) = tool(['migrate', 'host=/nonexistent/mx dbname=matrix '
                              . 'password=sekrit']);
    ok($rc eq '1' && $out eq ''
       && $err =~ /\Amatrix-tool: cannot connect to the database: .*nonexistent/s,
       'bad CONNINFO: exit 1, a clear message') or diag("exit $rc: $err");
    unlike($err, qr/sekrit/, 'the password is not printed');

    ($rc, $out, $err) = tool(['migrate', 'frobnicate=1']);
    ok($rc eq '1' && $err =~ /cannot connect.*invalid connection option/,
       'malformed CONNINFO: exit 1') or diag("exit $rc: $err");
}


# --status and --print change nothing

migrate_ok(['--status', $CI],
           qr/\Aschema "matrix": version 0, latest $LATEST\n(?:pending: \S+\n){$N}\z/,
           '--status on an empty database: version 0, every migration pending');

my $script = migrate_ok(['--print'], qr/^\QBEGIN;
SELECT pg_advisory_xact_lock(28024, hashtext('matrix'));
CREATE SCHEMA IF NOT EXISTS "matrix";
SET LOCAL search_path TO "matrix";
CREATE TABLE IF NOT EXISTS schema_migrations (\E/m,
    '--print without CONNINFO: the runner\'s steps');

like($script, qr/\QINSERT INTO schema_migrations (version, name) VALUES ($LATEST, '$MIGRATIONS[-1][1]');\E\n\nCOMMIT;\n\z/,
     '--print: every migration recorded, one COMMIT at the end');

is(sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'matrix'"), '0',
   '--status and --print created nothing');


# the printed script is what the runner does

{
    my (undef, $printed) = tool(['migrate', '--print', '--schema', 'by_hand']);
    my ($ok, undef, $err) = $pg->psql($printed, may_fail => 1);

    ok($ok && versions_in('by_hand') eq $VERSIONS,
       'the --print script applied with psql records every version')
        or diag($err);

    ($ok, undef, $err) = $pg->psql($printed, may_fail => 1);
    ok(!$ok && $err =~ /already exists/ && versions_in('by_hand') eq $VERSIONS,
       'applied twice, the script fails and changes nothing');

    migrate_ok(['--status', '--schema', 'by_hand', $CI], qr/up to date/,
               '--status agrees with the hand-applied schema');
}


# fresh migrate, then a second run

migrate_ok([$CI],
           qr/\A(?:schema "matrix": applied \S+\n){$N}schema "matrix": version $LATEST\n\z/,
           'fresh migrate applies everything');

is(versions_in('matrix'), $VERSIONS, 'schema_migrations records each version');
is(tables_in('matrix'), "@TABLES", 'the tables are there');
is(sql("SELECT proconfig::text FROM pg_proc WHERE proname = "
       . "'silo_change_trigger' AND pronamespace = 'matrix'::regnamespace"),
   '{search_path=matrix}',
   'the trigger function carries the search path of its schema');
is(sql("SELECT prosecdef || ' ' || proconfig::text FROM pg_proc WHERE proname = "
       . "'silo_reaction_trigger' AND pronamespace = 'matrix'::regnamespace"),
   'true {search_path=matrix}',
   'so does the reactions trigger function, SECURITY DEFINER');

{
    my $before = sql('SELECT version, applied_at FROM matrix.schema_migrations');

    migrate_ok([$CI], qr/\Aschema "matrix": version $LATEST, up to date\n\z/,
               'a second run is a no-op');
    is(sql('SELECT version, applied_at FROM matrix.schema_migrations'),
       $before, 'nothing re-applied');

    migrate_ok(['--status', $CI], qr/version $LATEST, latest $LATEST\nup to date/,
               '--status: up to date');
    migrate_ok(['--print', $CI], qr/\A-- .*nothing to apply\n\z/,
               '--print with CONNINFO: only what is pending, here nothing');
}


# another schema

migrate_ok(['--schema', 'other', $CI], qr/schema "other": version $LATEST\n\z/,
           '--schema other');
is(tables_in('other'), "@TABLES", 'other has its own tables');
is(versions_in('other'), $VERSIONS, 'and its own versions');

sql("INSERT INTO other.silo_localparts VALUES ('u1', 'alice')");
is(sql('SELECT count(*) FROM matrix.silo_localparts'), '0',
   'a row in other is not in matrix');


# the module's tables and the silo's views share one search path

sql(<<'SQL');
CREATE SCHEMA matrix_silo;
CREATE VIEW matrix_silo.users AS SELECT 'u'::text AS user_id;
CREATE VIEW matrix_silo.rooms AS SELECT 'r'::text AS room_id;
CREATE VIEW matrix_silo.room_members AS SELECT 'r'::text AS room_id;
CREATE VIEW matrix_silo.messages AS SELECT 'm'::text AS message_id;
SQL

{
    my $resolved = sql(<<'SQL');
SET search_path = "matrix", "matrix_silo";
SELECT c.relnamespace::regnamespace || '.' || c.relname
    FROM unnest(ARRAY['users', 'rooms', 'room_members', 'messages', 'events'])
         WITH ORDINALITY AS x(name, i)
    JOIN pg_class c ON c.oid = to_regclass(x.name)
    ORDER BY x.i;
SQL

    is(join(' ', split /\n/, $resolved),
       'matrix_silo.users matrix_silo.rooms matrix_silo.room_members '
       . 'matrix_silo.messages matrix.events',
       'the silo view names resolve to the silo schema');
}


# concurrent migrators: each migration applied exactly once

for my $round (1 .. 3) {
    my $n = 8;
    my (@h, @out, @err);

    for my $i (0 .. $n - 1) {
        ($out[$i], $err[$i]) = ('', '');
        push @h, start([$ENV{MATRIX_TOOL}, 'migrate', '--schema',
                        "race$round", $CI],
                       '<', '/dev/null', '>', \$out[$i], '2>', \$err[$i],
                       timeout(60));
    }

    my @rc = map { $_->finish; $_->result } @h;
    my $all = join '', @out;
    my $applied = () = $all =~ /^schema "race\d": applied $FIRST$/mg;

    ok(!(grep { $_ != 0 } @rc) && $applied == 1
       && versions_in("race$round") eq $VERSIONS,
       "round $round: $n migrators at once all succeed, one applies")
        or diag("exits @rc\n$all@err");
}


# a database from the future is left alone

{
    sql("INSERT INTO other.schema_migrations VALUES (999, '999_future')");
    sql('DROP TABLE other.forward_extremities');

    my $before = tables_in('other') . ' / ' . versions_in('other');

    migrate_ok(['--schema', 'other', $CI],
               qr/version 999, latest $LATEST\nnewer than this matrix-tool/,
               'version 999: reported, exit 0');
    is(tables_in('other') . ' / ' . versions_in('other'), $before,
       'and nothing changed');
    migrate_ok(['--status', '--schema', 'other', $CI], qr/newer/,
               '--status says so too');
}


# a failing migration: rolled back, named, the server's message

{
    sql('CREATE SCHEMA clash; CREATE TABLE clash.events (x int)');

    my ($rc, $out, $err) = tool(['migrate', '--schema', 'clash', $CI]);

    ok($rc eq '1' && $out eq ''
       && $err =~ /migration $FIRST failed: relation "events" already exists/
       && $err =~ /rolled back: schema "clash" is unchanged/,
       'a failing migration: exit 1, which one, why')
        or diag("exit $rc\nstdout: $out\nstderr: $err");
    is(tables_in('clash'), 'events', 'nothing of it stayed');
}


# what an event row must hold: the full PDU, or all that rebuilds it

{
    sql(q{INSERT INTO matrix.matrix_rooms (room_id, silo_room_id, room_version)
          VALUES ('!r:example.org', 'r1', '11')});

    my $row = q{INSERT INTO matrix.events (depth, origin_server_ts, room_nid,
          event_id, type, sender, prev_nids, auth_nids, silo_message_id, %s)
          SELECT 1, 1, room_nid, '$%s', 'm.room.message', '@a:example.org',
          '{}', '{}', 'm1', %s FROM matrix.matrix_rooms};

    my ($ok) = $pg->psql(sprintf($row, 'pdu', 'e1', q{'{}'}), may_fail => 1);
    ok($ok, 'an event stored as its PDU');

    ($ok) = $pg->psql(sprintf($row, 'recipe, content_hash, key_id, signature', 'e2',
                        q{1, decode(repeat('00', 32), 'hex'), 'ed25519:a',
                          decode(repeat('00', 64), 'hex')}), may_fail => 1);
    ok($ok, 'an event rebuilt from its silo message');

    ($ok) = $pg->psql(sprintf($row, 'recipe, key_id, signature', 'e3',
                        q{1, 'ed25519:a', decode(repeat('00', 64), 'hex')}),
                may_fail => 1);
    ok(!$ok, 'without its content hash it is refused');

    ($ok) = $pg->psql(sprintf($row, 'pdu, recipe', 'e4', q{'{}', 1}), may_fail => 1);
    ok(!$ok, 'a PDU and a recipe at once are refused');
}


# the silo change feed

sql(<<'SQL');
CREATE SCHEMA chat;
CREATE TABLE chat.messages (id text PRIMARY KEY, room text, text text,
                            html text, pinned boolean DEFAULT false);
CREATE TRIGGER matrix_feed AFTER INSERT OR UPDATE OR DELETE ON chat.messages
    FOR EACH ROW EXECUTE FUNCTION
    matrix.silo_change_trigger('id', 'room', 'text', 'html');
CREATE TABLE chat.plain (id int PRIMARY KEY, room_id text);
CREATE TRIGGER matrix_feed AFTER INSERT ON chat.plain
    FOR EACH ROW EXECUTE FUNCTION matrix.silo_change_trigger('id', 'room_id');
CREATE TABLE chat.other_feed (id text, room_id text);
CREATE TRIGGER matrix_feed AFTER INSERT ON chat.other_feed
    FOR EACH ROW EXECUTE FUNCTION other.silo_change_trigger('id', 'room_id');

-- a silo_changes of the silo's own, first in the writer's search path
CREATE SCHEMA decoy;
CREATE TABLE decoy.silo_changes (LIKE matrix.silo_changes);

-- the silo application's role: no privilege in the module's schema
CREATE ROLE silo_app LOGIN;
GRANT USAGE ON SCHEMA chat, decoy TO silo_app;
GRANT ALL ON chat.messages, decoy.silo_changes TO silo_app;
SQL

sub changes {
    return sql('SELECT kind, message_id, room_id, coalesce(old_values::text, '
               . "'-') FROM matrix.silo_changes ORDER BY seq");
}

my ($dml_ok, undef, $dml_err) = $pg->psql(<<'SQL', may_fail => 1);
INSERT INTO chat.messages (id, room, text) VALUES ('m1', 'r1', 'hello');
UPDATE chat.messages SET text = 'hello!', html = '<b>hello!</b>' WHERE id = 'm1';
UPDATE chat.messages SET pinned = true WHERE id = 'm1';
UPDATE chat.messages SET id = id WHERE id = 'm1';
DELETE FROM chat.messages WHERE id = 'm1';
INSERT INTO chat.plain VALUES (7, 'r2');
SQL

ok($dml_ok && changes() eq join("\n",
       'insert|m1|r1|-',
       'update|m1|r1|{"body": "hello", "html": null}',
       'update|m1|r1|-',
       'update|m1|r1|-',
       'delete|m1|r1|-',
       'insert|7|r2|-'),
   'insert, updates (old content kept when it changed), delete, another table')
    or diag($dml_err . changes());

{
    my ($ok, undef, $err) = $pg->psql(<<'SQL', may_fail => 1);
SET ROLE silo_app;
SET search_path TO decoy, chat;
INSERT INTO messages (id, room, text) VALUES ('m2', 'r1', 'from the app');
SQL

    ok($ok && sql(q{SELECT count(*) FROM matrix.silo_changes
                    WHERE message_id = 'm2'}) eq '1'
       && sql('SELECT count(*) FROM decoy.silo_changes') eq '0',
       'a writer with its own search path and no grants: the row is in matrix')
        or diag($err);
}

sql(q{INSERT INTO chat.other_feed VALUES ('m3', 'r3')});
is(sql(q{SELECT count(*) FROM matrix.silo_changes WHERE message_id = 'm3'})
   . '/' . sql(q{SELECT count(*) FROM other.silo_changes}), '0/1',
   "other's trigger feeds other's table");

{
    sql('CREATE TABLE chat.bad (id int);'
        . 'CREATE TRIGGER f AFTER INSERT ON chat.bad FOR EACH ROW '
        . "EXECUTE FUNCTION matrix.silo_change_trigger('id')");

    my ($ok, undef, $err) = $pg->psql('INSERT INTO chat.bad VALUES (1)',
                                      may_fail => 1);
    ok(!$ok && $err =~ /silo_change_trigger\(id_column, room_column/,
       'a trigger with one argument says what it needs');
}


# the reactions trigger: the same properties, the change about a reaction

{
    sql(<<'SQL');
CREATE TABLE chat.reactions (id int PRIMARY KEY, message_id text, key text);
CREATE TRIGGER matrix_feed AFTER INSERT OR UPDATE OR DELETE ON chat.reactions
    FOR EACH ROW EXECUTE FUNCTION
    matrix.silo_reaction_trigger('id', 'message_id');
GRANT ALL ON chat.reactions TO silo_app;
SQL

    my ($ok, undef, $err) = $pg->psql(<<'SQL', may_fail => 1);
SET ROLE silo_app;
SET search_path TO decoy, chat;
INSERT INTO reactions VALUES (5, 'm9', 'ok');
DELETE FROM reactions WHERE id = 5;
SQL

    my $got = sql(q{SELECT string_agg(kind || '|' || about || '|' || reaction_id
                                      || '|' || message_id || '|'
                                      || coalesce(room_id, '-'), ',' ORDER BY seq)
                      FROM matrix.silo_changes WHERE about = 'reaction'});
    ok($ok && $got eq 'insert|reaction|5|m9|-,delete|reaction|5|m9|-'
       && sql('SELECT count(*) FROM decoy.silo_changes') eq '0',
       'a reaction added and removed by a writer with no grants: two '
       . 'changes about it, in matrix, their room not known yet')
        or diag($err . $got);

    sql('CREATE TABLE chat.bad_reactions (id int);'
        . 'CREATE TRIGGER f AFTER INSERT ON chat.bad_reactions FOR EACH ROW '
        . "EXECUTE FUNCTION matrix.silo_reaction_trigger('id')");

    ($ok, undef, $err) = $pg->psql('INSERT INTO chat.bad_reactions VALUES (1)',
                                   may_fail => 1);
    ok(!$ok && $err =~ /silo_reaction_trigger\(id_column, message_column\)/,
       'a reactions trigger with one argument says what it needs');
}

# NOTIFY reaches a listener on another connection, at the writer's commit

{
    my ($out, $err) = ('', '');
    my @psql = ('psql', '-X', '-q', '-A', '-t', '-h', $pg->host,
                '-U', 'postgres', '-d', 'matrix');

    # from a file: IPC::Run feeds a scalar only while we pump, we poll
    my $in = write_file($pg->host . '/listen.sql',
                        "LISTEN matrix_silo_changes;\nSELECT pg_sleep(3);\n");

    local $ENV{PGAPPNAME} = 'mx-listener';
    my $h = start([@psql], '<', $in, '>', \$out, '2>', \$err,
                  timeout(60));

    # the sleep has begun, so LISTEN is done
    my $listening = 0;
    for (1 .. 100) {
        last if $listening = sql("SELECT count(*) FROM pg_stat_activity "
            . "WHERE application_name = 'mx-listener' "
            . "AND query LIKE 'SELECT pg_sleep%'");
        select undef, undef, undef, 0.05;
    }

    my ($ok, $seq, $werr) = $pg->psql(<<'SQL', may_fail => 1);
SET search_path TO decoy, chat;
INSERT INTO messages (id, room, text) VALUES ('m4', 'r1', 'notified');
SELECT max(seq) FROM matrix.silo_changes;
SQL

    $h->finish;

    ok($ok && $listening && $out =~ /notification "matrix_silo_changes" with payload "$seq"/,
       'the listener is told the new seq')
        or diag("listening $listening, seq $seq\nwriter: $werr\n"
                . "listener: $out$err");
}

done_testing();
