# The silo contract (docs/silo-contract.md) against the reference silo
# (examples/silo/): a private Postgres cluster gets the silo's schema and
# seed, the module's schema (matrix-tool migrate) and the operator's
# mapping (matrix.sql); silo.py then runs on a free loopback port.
# Checked: the five views (columns, rows, the indexes the module relies
# on, the read-only role), the internal API (token, idempotency, 4xx on
# bad input, edits, deletions, memberships, password logins) and the
# change feed (matrix.silo_changes and its NOTIFY) for writes through the
# silo's own user API.
#
#   make tool
#   MATRIX_TOOL=$PWD/build/matrix-tool MATRIX_BUILD_DIR=$PWD/build \
#       prove -I t/runner -I t/lib -v t/060-silo.t

use strict;
use warnings;
use utf8;

use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Run qw(run start timeout);
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(sleep time);

use MatrixPg;
use MatrixTest qw(write_file);

plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};
plan skip_all => 'no PostgreSQL server (apt-get install postgresql)'
    unless MatrixPg->available;
plan skip_all => 'apt-get install python3-aiohttp python3-asyncpg '
               . 'python3-markdown python3-bleach'
    unless system('/usr/bin/python3', '-c',
                  'import aiohttp, asyncpg, markdown, bleach') == 0;

my $SILO = "$FindBin::Bin/../examples/silo";
my $TOKEN = 'silo-test-token-' . ('x7' x 12);
my $JSON = JSON::PP->new->utf8->canonical;

my $dir = tempdir('silo-test-XXXXXX', TMPDIR => 1, CLEANUP => 1);

$SIG{PIPE} = 'IGNORE';


# ------------------------------------------------------------------ setup

my $pg = MatrixPg->start;
my $ci = $pg->conninfo;

ok(eval { $pg->example_silo; 1 },
   'the silo, matrix-tool migrate and the mapping') or diag($@);
BAIL_OUT("no example silo: $@") if $@;

my $token_file = write_file("$dir/token", "$TOKEN\n", 0600);

my $port = do {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $p = $s->sockport;
    close $s;
    $p;
};

my $base = "http://127.0.0.1:$port";
my $silo_log = '';
my $silo = start ['/usr/bin/python3', "$SILO/silo.py", '--dsn', $ci,
                  '--listen', "127.0.0.1:$port",
                  '--internal-token-file', $token_file],
    '<', \undef, '>&', \$silo_log;

END { local $?; $silo->kill_kill(grace => 3) if $silo && $silo->pumpable }

my $http = HTTP::Tiny->new(timeout => 30);

{
    my $up;
    for (1 .. 200) {
        $silo->pump_nb;
        last unless $silo->pumpable;
        my $r = $http->get("$base/healthz");
        if ($r->{status} == 200) { $up = 1; last }
        sleep 0.1;
    }
    ok($up, 'silo.py answers /healthz') or diag($silo_log);
    BAIL_OUT("silo.py did not start: $silo_log") unless $up;
}


# ---------------------------------------------------------------- helpers

# one row per line, columns joined by "|" (psql -A -t)
sub sql { scalar $pg->psql(@_) }

sub call {
    my ($method, $path, $body, %o) = @_;

    my %h = ('Content-Type' => 'application/json');
    $h{Authorization} = "Bearer $o{token}" if defined $o{token};

    my $r = $http->request($method, "$base$path", {
        headers => \%h,
        defined $body
            ? (content => ref $body ? $JSON->encode($body) : $body) : () });

    my $json = eval { $JSON->decode($r->{content}) };

    return ($r->{status}, $json, $r);
}

# the internal API, with the right token unless told otherwise
sub internal {
    my ($method, $path, $body, %o) = @_;

    return call($method, "/internal/matrix/$path", $body,
                token => exists $o{token} ? $o{token} : $TOKEN);
}

my $TS = 1_710_000_000_000;

sub sender {
    my ($name, %o) = @_;

    return { user_id => "\@$name:remote.example", displayname => $o{display}
             // ucfirst $name, avatar_url => $o{avatar} };
}

sub message_body {
    my (%o) = @_;

    return { room_id => '1', sender => sender('zoe'), body => 'hello',
             html => undef, ts => $TS, reply_to => undef,
             thread_root => undef, %o };
}


# ------------------------------------------------------------ the views

my %COLUMNS = (
    users => 'user_id text,localpart text,display_name text,'
           . 'avatar_url text,deactivated boolean',
    rooms => 'room_id text,alias text,name text,topic text,'
           . 'is_public boolean,created_at timestamp with time zone,'
           . 'avatar_url text,member_count bigint',
    room_members => 'room_id text,user_id text,role text,'
                  . 'joined_at timestamp with time zone',
    messages => 'message_id text,room_id text,user_id text,body text,'
              . 'html text,created_at timestamp with time zone,'
              . 'edited_at timestamp with time zone,'
              . 'deleted_at timestamp with time zone,reply_to text,'
              . 'thread_root text,matrix_event_id text',
);

for my $view (sort keys %COLUMNS) {
    is(sql("SELECT string_agg(column_name || ' ' || data_type, ','
                               ORDER BY ordinal_position)
              FROM information_schema.columns
             WHERE table_schema = 'matrix_silo' AND table_name = '$view'"),
       $COLUMNS{$view}, "view matrix_silo.$view: the contract's columns");
}

is(sql("SELECT string_agg(user_id || ':' || localpart || ':' || deactivated,
                          ' ' ORDER BY user_id::int) FROM matrix_silo.users"),
   '1:alice:false 2:bob:false 3:carol:false 4:dave:false 5:erin:false '
   . '6:frank:false 7:grace:true', 'users: the seven, grace deactivated');

is(sql("SELECT count(*) FROM matrix_silo.users
         WHERE localpart !~ '^[a-z0-9._=/-]+\$'"), 0,
   'users: every localpart is Matrix-legal');

is(sql("SELECT room_id || ':' || coalesce(alias, '-') || ':' || name || ':'
               || is_public FROM matrix_silo.rooms ORDER BY room_id"),
   "1:general:General:true\n2:random:Random:true\n3:-:Staff:false",
   'rooms: two public with aliases, one private without');

is(sql("SELECT string_agg(r.room_id || '=' || r.member_count || '/'
                          || (SELECT count(*) FROM matrix_silo.room_members m
                               WHERE m.room_id = r.room_id), ' '
                          ORDER BY r.room_id)
          FROM matrix_silo.rooms r"),
   '1=7/7 2=5/5 3=3/3', 'rooms: member_count is the count of room_members');

is(sql("SELECT room_id || ':' || count(*) || ':'
               || string_agg(user_id || '=' || role, ',' ORDER BY user_id)
                  FILTER (WHERE role <> 'member')
          FROM matrix_silo.room_members GROUP BY room_id ORDER BY room_id"),
   "1:7:1=admin,2=moderator\n2:5:2=admin\n3:3:1=admin,2=moderator",
   'room_members: members per room, owners as admin');

is(sql("SELECT count(*), count(DISTINCT thread_root), count(reply_to),
               count(edited_at), count(deleted_at), count(matrix_event_id),
               min(created_at), max(created_at)
          FROM matrix_silo.messages WHERE room_id = '1'"),
   '300|10|11|6|2|0|2024-01-15 09:00:37+00|2024-01-16 09:55:00+00',
   'messages in general: 300, 10 threads, replies, edits, deletions');

is(sql("SELECT body || '|' || coalesce(html, 'NULL') || '|'
               || (deleted_at IS NOT NULL)
          FROM matrix_silo.messages WHERE message_id IN ('150', '251')"),
   "|NULL|true\n|NULL|true", 'messages: a deleted one shows no text');

is(sql("SELECT count(*) FROM matrix_silo.messages m
          JOIN matrix_silo.messages r ON r.message_id = m.reply_to
         WHERE r.room_id = m.room_id"), 13,
   'messages: replies name messages of the same room');

like(sql("SELECT html FROM matrix_silo.messages WHERE message_id = '31'"),
     qr{^<p>.*<strong>segfault</strong>}, 'messages: html is the rendering');

# the lookups the module makes, with sequential scans off: each one
# must find an index (the views cast bigint ids to text)
for my $q (
    ["users by user_id", "SELECT * FROM users WHERE user_id = '3'"],
    ["users by localpart", "SELECT * FROM users WHERE localpart = 'bob'"],
    ["rooms by room_id", "SELECT * FROM rooms WHERE room_id = '2'"],
    ["rooms by alias", "SELECT * FROM rooms WHERE alias = 'general'"],
    ["room_members by (room_id, user_id)",
     "SELECT * FROM room_members WHERE room_id = '1' AND user_id = '2'"],
    ["messages by message_id",
     "SELECT * FROM messages WHERE message_id = '42'"],
    ["messages by (room_id, created_at)",
     "SELECT * FROM messages WHERE room_id = '1'
       AND created_at < '2024-01-16' ORDER BY created_at DESC LIMIT 20"])
{
    my $plan = sql("SET search_path = \"matrix\", \"matrix_silo\";
                    SET enable_seqscan = off; EXPLAIN $q->[1]");
    ok($plan =~ /Index/ && $plan !~ /Seq Scan/, "index for $q->[0]")
        or diag($plan);
}

# the module's role reads the views and nothing else of the silo
is(sql("SET ROLE matrix_module; SET search_path = \"matrix\", \"matrix_silo\";
        SELECT (SELECT count(*) FROM users) || ':'
               || (SELECT count(*) FROM messages)"), '7:355',
   'matrix_module reads the views, unqualified');

for my $q ('SELECT count(*) FROM chat.users',
           'SELECT count(*) FROM chat.messages',
           "INSERT INTO matrix_silo.rooms (name) VALUES ('x')",
           "UPDATE matrix_silo.messages SET created_at = now()",
           'DELETE FROM matrix_silo.users')
{
    my ($ok, undef, $err) = $pg->psql("SET ROLE matrix_module; $q",
                                      may_fail => 1);
    ok(!$ok && $err =~ /permission denied/, "matrix_module may not: $q")
        or diag($err);
}


# ---------------------------------------------------- internal API: auth

{
    my $body = message_body();

    my ($st, $j, $r) = internal('PUT', 'messages/$noauth', $body,
                                token => undef);
    is($st, 401, 'no token: 401');
    like($r->{headers}{'www-authenticate'} // '', qr/^Bearer/,
         'no token: WWW-Authenticate: Bearer');
    ok($j && $j->{error}, 'no token: a JSON error');

    ($st) = internal('PUT', 'messages/$noauth', $body, token => 'x' . $TOKEN);
    is($st, 401, 'wrong token: 401');

    ($st) = internal('PUT', 'messages/$noauth', $body,
                     token => substr($TOKEN, 0, -1));
    is($st, 401, 'a prefix of the token: 401');

    ($st) = internal('POST', 'auth/password',
                     { localpart => 'alice', password => 'alice-password' },
                     token => 'nope');
    is($st, 401, 'auth/password without the token: 401');

    is(sql("SELECT count(*) FROM chat.messages
             WHERE matrix_event_id = '\$noauth'"), 0,
       'refused writes wrote nothing');
}


# ------------------------------------------------ internal API: messages

my ($m1, $feed_before);

{
    my $body = message_body(
        body => 'hello from **Matrix**',
        html => '<p>hello from <strong>Matrix</strong>'
              . '<script>alert(1)</script><img src=x onerror=y></p>',
        sender => sender('zoe', display => 'Zoe Z',
                         avatar => 'https://remote.example/zoe.png'),
        reply_to => '5');

    my ($st, $j) = internal('PUT', 'messages/$ev1', $body);
    is($st, 200, 'PUT messages: 200');
    like($j->{message_id} // '', qr/^\d+$/, 'PUT messages: a message_id');
    $m1 = $j->{message_id} // 'none';

    ($st, $j) = internal('PUT', 'messages/$ev1', $body);
    is($st, 200, 'PUT messages again: 200');
    is($j->{message_id}, $m1, 'PUT messages again: the same message_id');

    ($st, $j) = internal('PUT', 'messages/$ev1',
                         { %$body, body => 'something else' });
    is($j->{message_id}, $m1, 'a retry with another body: the first answer');

    is(sql("SELECT count(*) FROM chat.messages WHERE matrix_event_id = '\$ev1'"),
       1, 'three PUTs, one message');

    is(sql("SELECT room_id || '|' || (user_id::int > 7) || '|' || body || '|'
                   || coalesce(reply_to, '-') || '|' || matrix_event_id || '|'
                   || (created_at = to_timestamp($TS / 1000.0))
              FROM matrix_silo.messages WHERE message_id = '$m1'"),
       "1|true|hello from **Matrix**|5|\$ev1|true",
       'the message in the view, with its event ID and ts');

    my $html = sql("SELECT html FROM matrix_silo.messages
                     WHERE message_id = '$m1'");
    like($html, qr{<strong>Matrix</strong>}, 'html kept');
    unlike($html, qr{<script|onerror|<img}i, 'html sanitised');

    is(sql("SELECT display_name || '|' || avatar_url || '|'
                   || (username IS NULL) || '|' || (password_hash IS NULL)
              FROM chat.users WHERE matrix_user_id = '\@zoe:remote.example'"),
       'Zoe Z|https://remote.example/zoe.png|true|true',
       'a virtual user for the sender, flagged, with no login');

    is(sql("SELECT (SELECT count(*) FROM matrix_silo.users)
                   + (SELECT count(*) FROM matrix_silo.room_members
                       WHERE user_id::int > 7)"), 7,
       'virtual users stay out of users and room_members');

    # the same event ID from several clients at once: one message.  The
    # children wait for the parent to close "go", then all send at once.
    my @kids;
    pipe my $go_r, my $go_w or die;
    for my $i (1 .. 10) {
        pipe my $r, my $w or die;
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            close $r;
            close $go_w;
            sysread $go_r, my $buf, 1;
            my ($st, $j) = internal('PUT', 'messages/$race',
                                    message_body(body => "race $i"));
            print $w "$st " . ($j->{message_id} // '-');
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    close $go_r;
    sleep 0.2;
    close $go_w;
    my %answers;
    for (@kids) {
        my ($pid, $r) = @$_;
        local $/;
        $answers{<$r> // ''}++;
        waitpid $pid, 0;
    }
    is(scalar(keys %answers), 1, 'ten concurrent PUTs: one answer')
        or diag(explain \%answers);
    like((keys %answers)[0], qr/^200 \d+$/, 'ten concurrent PUTs: 200');
    is(sql("SELECT count(*) FROM chat.messages
             WHERE matrix_event_id = '\$race'"), 1,
       'ten concurrent PUTs: one message');

    # threads: a message in a thread is filed under the thread's root
    ($st, $j) = internal('PUT', 'messages/$ev-thread',
                         message_body(thread_root => '11', reply_to => '13'));
    is($st, 200, 'PUT messages in a thread');
    is(sql("SELECT thread_root || '|' || reply_to FROM matrix_silo.messages
             WHERE matrix_event_id = '\$ev-thread'"), '10|13',
       'thread_root is the root (11 is in the thread of 10)');
}

# 4xx on bad input, each a JSON error, none with an effect
{
    my @bad = (
        ['messages/$bad1', { %{ message_body() }, room_id => '999' }, 404,
         'an unknown room'],
        ['messages/$bad2', { %{ message_body() }, room_id => 'general' },
         404, 'a room id not of the silo'],
        ['messages/$bad3', do { my $b = message_body(); delete $b->{body};
                                $b }, 400, 'no body'],
        ['messages/$bad4', message_body(body => 42), 400, 'a number as body'],
        ['messages/$bad5', message_body(ts => 'yesterday'), 400,
         'ts not a number'],
        ['messages/$bad6', message_body(sender => { user_id => 'zoe' }), 400,
         'sender not a Matrix ID'],
        ['messages/$bad7', message_body(sender => 'zoe'), 400,
         'sender not an object'],
        ['messages/$bad8', message_body(reply_to => '340'), 400,
         'reply_to in another room'],
        ['messages/$bad9', message_body(thread_root => '123456'), 400,
         'thread_root unknown'],
        ['messages/$bad10', '{"room_id": "1", ', 400, 'not JSON'],
        ['messages/$bad14', message_body(body => "a\x{0}b"), 400,
         'a NUL in the body'],
        ['messages/$bad15', '{"room_id": "1", "body": "\\ud800", "ts": 1, '
         . '"sender": {"user_id": "@zoe:remote.example"}}', 400,
         'a lone surrogate'],
        ['messages/$bad16', '[' x 100000, 400, 'JSON nested too deep'],
        ['messages/$bad17', message_body(ts => 300_000_000_000_000), 400,
         'ts past the year 9999'],
        ['messages/$bad11', '[1, 2]', 400, 'not an object'],
        ['messages/no-dollar', message_body(), 400, 'not an event ID'],
        ['messages/$bad12', message_body(body => 'x' x 40000), 400,
         'a body too long'],
        ['messages/$bad13', message_body(body => 'y' x 300000), 413,
         'a request too large'],
    );

    for my $b (@bad) {
        my ($path, $body, $want, $what) = @$b;
        my ($st, $j) = internal('PUT', $path, $body);
        is($st, $want, "PUT messages, $what: $want");
        ok($j && defined $j->{error} && !ref $j->{error},
           "PUT messages, $what: {\"error\": ...}");
    }

    is(sql("SELECT count(*) FROM chat.messages
             WHERE matrix_event_id LIKE '\$bad%'"), 0,
       'refused messages wrote nothing');

    my ($st) = internal('GET', 'messages/$ev1', undef);
    is($st, 405, 'GET on a write: 405');
}


# ------------------------------------------- internal API: edits, deletes

{
    my $edit = { room_id => '1', message_id => $m1, sender => sender('zoe'),
                 body => 'edited once', html => undef, ts => $TS + 1000 };

    my ($st, $j) = internal('PUT', 'edits/$ed1', $edit);
    is($st, 200, 'PUT edits: 200');
    is_deeply($j, {}, 'PUT edits: {}');

    is(sql("SELECT body || '|' || html || '|'
                   || (edited_at = to_timestamp(($TS + 1000) / 1000.0))
              FROM matrix_silo.messages WHERE message_id = '$m1'"),
       'edited once|<p>edited once</p>|true', 'the edit in the view');

    ($st) = internal('PUT', 'edits/$ed2',
                     { %$edit, body => 'edited twice', ts => $TS + 2000 });
    is($st, 200, 'a second edit');

    ($st, $j) = internal('PUT', 'edits/$ed1', $edit);
    is($st, 200, 'the first edit again: 200');
    is(sql("SELECT body FROM matrix_silo.messages WHERE message_id = '$m1'"),
       'edited twice', 'the first edit again: not applied again');

    ($st) = internal('PUT', 'edits/$ed3',
                     { %$edit, sender => sender('mallory') });
    is($st, 403, 'an edit by someone else: 403');

    ($st) = internal('PUT', 'edits/$ed4', { %$edit, message_id => '5' });
    is($st, 403, "an edit of a silo user's message: 403");

    ($st) = internal('PUT', 'edits/$ed5', { %$edit, message_id => '320' });
    is($st, 404, 'an edit of a message of another room: 404');

    ($st) = internal('PUT', 'edits/$ev1', $edit);
    is($st, 409, "an edit reusing a message's event ID: 409");

    my $del = { room_id => '1', message_id => $m1, sender => sender('zoe'),
                ts => $TS + 3000 };

    ($st) = internal('PUT', 'deletions/$del0',
                     { %$del, sender => sender('mallory') });
    is($st, 403, 'a deletion by someone else: 403');

    ($st, $j) = internal('PUT', 'deletions/$del1', $del);
    is($st, 200, 'PUT deletions: 200');
    is_deeply($j, {}, 'PUT deletions: {}');
    ($st) = internal('PUT', 'deletions/$del1', $del);
    is($st, 200, 'PUT deletions again: 200');

    is(sql("SELECT body || '|' || coalesce(html, 'NULL') || '|'
                   || (deleted_at = to_timestamp(($TS + 3000) / 1000.0))
              FROM matrix_silo.messages WHERE message_id = '$m1'"),
       '|NULL|true', 'the deletion in the view');

    ($st) = internal('PUT', 'edits/$ed6', $edit);
    is($st, 409, 'an edit of a deleted message: 409');

    ($st) = internal('PUT', 'deletions/$ed1', $del);
    is($st, 409, "a deletion reusing an edit's event ID: 409");
}


# ---------------------------------------------- internal API: membership

{
    my $join = { room_id => '2', sender => sender('yan'),
                 membership => 'join', ts => $TS };
    my $yan = "(SELECT id FROM chat.users
                 WHERE matrix_user_id = '\@yan:remote.example')";

    my ($st, $j) = internal('PUT', 'memberships/$j1', $join);
    is($st, 200, 'PUT memberships join: 200');
    is(sql("SELECT count(*) FROM chat.memberships
             WHERE room_id = 2 AND user_id = $yan"), 1, 'joined');

    ($st) = internal('PUT', 'memberships/$l1',
                     { %$join, membership => 'leave', ts => $TS + 1 });
    is($st, 200, 'PUT memberships leave: 200');

    ($st) = internal('PUT', 'memberships/$j1', $join);
    is($st, 200, 'the join again: 200');
    is(sql("SELECT count(*) FROM chat.memberships
             WHERE room_id = 2 AND user_id = $yan"), 0,
       'the join again: not applied again');

    ($st) = internal('PUT', 'memberships/$j2',
                     { %$join, membership => 'ban' });
    is($st, 400, 'membership "ban": 400');
}


# ------------------------ internal API: reactions, typing, receipts

{
    my $react = { room_id => '1', message_id => '5', sender => sender('zoe'),
                  key => 'ok', ts => $TS + 4000 };
    my $REACTIONS = "SELECT count(*) FROM chat.reactions
                      WHERE message_id = 5 AND removed_at IS NULL";

    my ($st, $j) = internal('PUT', 'reactions/$x1', $react);
    is($st, 200, 'PUT reactions: 200');
    is_deeply($j, {}, 'PUT reactions: {}');
    ($st) = internal('PUT', 'reactions/$x1', $react);
    is($st, 200, 'PUT reactions again: 200');
    is(sql($REACTIONS), 1, 'PUT reactions again: one reaction');

    ($st) = internal('PUT', 'reactions/$x2', { %$react, message_id => '320' });
    is($st, 404, 'a reaction to a message of another room: 404');
    ($st) = internal('PUT', 'reactions/$x3', { %$react, key => 'k' x 256 });
    is($st, 400, 'a reaction key of 256 characters: 400');
    ($st) = internal('PUT', 'reactions/$ev1', $react);
    is($st, 409, "a reaction reusing a message's event ID: 409");

    my $unreact = { room_id => '1', reaction_event_id => '$x1',
                    sender => sender('mallory'), ts => $TS + 5000 };
    ($st) = internal('PUT', 'unreactions/$u0', $unreact);
    is($st, 403, "removing someone else's reaction: 403");
    ($st) = internal('PUT', 'unreactions/$u1', { %$unreact, room_id => '2' });
    is($st, 404, 'removing a reaction of another room: 404');
    ($st, $j) = internal('PUT', 'unreactions/$u2',
                         { %$unreact, sender => sender('zoe') });
    is($st, 200, 'PUT unreactions: 200');
    is(sql($REACTIONS), 0, 'the reaction is gone');
    ($st) = internal('PUT', 'reactions/$x1', $react);
    is($st, 200, 'the reaction again after its removal: 200');
    is(sql($REACTIONS), 0, 'and not back');
    ($st) = internal('PUT', 'unreactions/$x1', $unreact);
    is($st, 409, "an unreaction reusing a reaction's event ID: 409");

    my $zoe = "(SELECT id FROM chat.users
                 WHERE matrix_user_id = '\@zoe:remote.example')";
    ($st, $j) = internal('PUT', 'typing', { room_id => '1',
        sender => sender('zoe'), typing => JSON::PP::true, timeout => 30000 });
    is($st, 200, 'PUT typing: 200');
    is(sql("SELECT until > now() FROM chat.typing
             WHERE room_id = 1 AND user_id = $zoe"), 't', 'zoe is typing');
    ($st) = internal('PUT', 'typing', { room_id => '1',
        sender => sender('zoe'), typing => JSON::PP::false, timeout => 30000 });
    is(sql("SELECT until IS NULL FROM chat.typing
             WHERE room_id = 1 AND user_id = $zoe"), 't', 'and then not');
    ($st) = internal('PUT', 'typing', { room_id => '1', sender => sender('zoe'),
                                        typing => 'yes', timeout => 30000 });
    is($st, 400, 'PUT typing, typing not a boolean: 400');

    my $read = { room_id => '1', sender => sender('zoe'), message_id => '7',
                 ts => $TS };
    ($st) = internal('PUT', 'receipts', $read);
    is($st, 200, 'PUT receipts: 200');
    ($st) = internal('PUT', 'receipts', { %$read, message_id => '6' });
    is($st, 200, 'PUT receipts of an earlier message: 200');
    is(sql("SELECT message_id FROM chat.read_markers
             WHERE room_id = 1 AND user_id = $zoe"), 7, 'the marker never goes back');
    ($st) = internal('PUT', 'receipts', { %$read, message_id => '320' });
    is($st, 404, 'PUT receipts of a message of another room: 404');
    ($st) = internal('PUT', 'receipts', $read, token => 'x' . $TOKEN);
    is($st, 401, 'PUT receipts, a wrong token: 401');
}


# ------------------------------------------ internal API: password login

{
    my ($st, $j) = internal('POST', 'auth/password',
                            { localpart => 'alice',
                              password => 'alice-password' });
    is($st, 200, 'auth/password: 200');
    is_deeply($j, { user_id => '1' }, 'auth/password: the silo user_id');

    ($st, $j) = internal('POST', 'auth/password',
                         { localpart => 'alice', password => 'alice-passw0rd' });
    is($st, 403, 'auth/password, wrong password: 403');
    ok($j && $j->{error}, 'auth/password, wrong password: a JSON error');

    ($st) = internal('POST', 'auth/password',
                     { localpart => 'nobody', password => 'alice-password' });
    is($st, 403, 'auth/password, unknown localpart: 403');

    ($st) = internal('POST', 'auth/password',
                     { localpart => 'grace', password => 'grace-password' });
    is($st, 403, 'auth/password, a deactivated user: 403');

    ($st) = internal('POST', 'auth/password', { localpart => 'alice' });
    is($st, 400, 'auth/password without a password: 400');
}


# ------------------------------------- the user API and the change feed

# a session listening on the feed's channel; psql prints notifications
# after each command it runs
my ($lin, $lout) = ('', '');
my $listener = start ['psql', '-X', '-q', '-A', '-t', '-h', $pg->host,
                      '-U', 'postgres', '-d', 'matrix'],
    \$lin, '>&', \$lout;
my $mark = 0;

# the payloads announced since the last call: the first statement sent
# picks up what arrived meanwhile, the second marks the end
sub notifications {
    my $t = time + 20;

    $mark++;
    $lin .= "SELECT 1;\nSELECT 'mark$mark';\n";
    while ($lout !~ /^mark$mark$/m && time < $t) {
        $listener->pump_nb;
        sleep 0.02;
    }
    die "psql listener stuck: $lout" unless $lout =~ /^mark$mark$/m;

    my @payloads = $lout =~ /"matrix_silo_changes" with payload "(\d+)"/g;
    $lout = '';

    return \@payloads;
}

$lin .= "LISTEN matrix_silo_changes;\n";
notifications();

{
    my ($st, $j) = call('POST', '/api/login',
                        { username => 'alice', password => 'alice-password' });
    is($st, 200, 'user API: login');
    my $alice = $j->{token} // '';

    ($st) = call('POST', '/api/login',
                 { username => 'alice', password => 'wrong' });
    is($st, 403, 'user API: login with a wrong password: 403');

    my $seq = sql('SELECT coalesce(max(seq), 0) FROM matrix.silo_changes');

    ($st, $j) = call('POST', '/api/rooms/1/messages',
                     { text => 'posted *here*', thread_root => '40' },
                     token => $alice);
    is($st, 200, 'user API: post');
    my $mid = $j->{message_id} // 'none';

    my $got = notifications();
    is(sql("SELECT kind || '|' || message_id || '|' || room_id
              FROM matrix.silo_changes WHERE seq > $seq ORDER BY seq"),
       "insert|$mid|1", 'the post is in matrix.silo_changes');
    is_deeply($got, [split /\n/, sql("SELECT seq FROM matrix.silo_changes
                                      WHERE seq > $seq")],
              'and NOTIFY matrix_silo_changes named it');

    is(sql("SELECT user_id || '|' || body || '|' || html || '|' || thread_root
                   || '|' || (matrix_event_id IS NULL)
              FROM matrix_silo.messages WHERE message_id = '$mid'"),
       '1|posted *here*|<p>posted <em>here</em></p>|40|true',
       'the post in the view, rendered, no event ID');

    ($st) = call('PATCH', "/api/messages/$mid", { text => 'posted there' },
                 token => $alice);
    is($st, 200, 'user API: edit');
    is(sql("SELECT kind || '|' || (old_values ->> 'body')
              FROM matrix.silo_changes WHERE seq > $seq ORDER BY seq DESC
             LIMIT 1"), 'update|posted *here*',
       'the edit is in the feed, with the text it replaced');

    ($st) = call('DELETE', "/api/messages/$mid", undef, token => $alice);
    is($st, 200, 'user API: delete');
    is(sql("SELECT count(*) FROM matrix.silo_changes
             WHERE seq > $seq AND message_id = '$mid'"), 3,
       'post, edit, delete: three changes');
    is(scalar @{ notifications() }, 2, 'and two more notifications');

    ($st) = call('PATCH', "/api/messages/5", { text => 'mine now' },
                 token => $alice);
    is($st, 403, "user API: editing another's message: 403");

    # a rename does not change the Matrix localpart
    ($st) = call('PATCH', '/api/me', { username => 'bob' }, token => $alice);
    is($st, 409, 'user API: renaming to a taken name: 409');
    ($st) = call('PATCH', '/api/me',
                 { username => 'alicia', display_name => 'Alicia' },
                 token => $alice);
    is($st, 200, 'user API: rename alice to alicia');
    is(sql("SELECT localpart || '|' || display_name FROM matrix_silo.users
             WHERE user_id = '1'"), 'alice|Alicia',
       'after a rename: the same localpart, the new display name');
    ($st, $j) = internal('POST', 'auth/password',
                         { localpart => 'alice', password => 'alice-password' });
    is_deeply([$st, $j], [200, { user_id => '1' }],
              'auth/password by the localpart, after the rename');

    ($st) = call('POST', '/api/signup',
                 { username => 'alice', password => 'a new alice' });
    is($st, 409, 'user API: a renamed-away name is not handed out again');

    # the silo's own clients see Matrix writes: a live stream of room 1
    # gets the message PUT through the internal API
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        sleep 0.5;
        internal('PUT', 'messages/$live', message_body(body => 'live'));
        POSIX::_exit(0);
    }
    my $seen = '';
    my $r = HTTP::Tiny->new(timeout => 10)->request(
        'GET', "$base/api/rooms/1/stream", {
            headers => { Authorization => "Bearer $alice" },
            data_callback => sub {
                $seen .= $_[0];
                die "seen\n" if $seen =~ /^data: .*\n\n/m;
            } });
    waitpid $pid, 0;
    my $live = sql("SELECT id FROM chat.messages
                     WHERE matrix_event_id = '\$live'");
    like($seen, qr/^data: \{"type": "message", "message_id": "$live"\}$/m,
         "a Matrix write reaches the silo's own live stream");

    ($st, $j) = call('POST', '/api/login',
                     { username => 'dave', password => 'dave-password' });
    ($st) = call('GET', '/api/rooms/3/messages', undef, token => $j->{token});
    is($st, 404, 'user API: a private room is hidden from non-members');
}

$listener->kill_kill;

$silo->pump_nb for 1 .. 3;      # collect what it printed
ok($silo->pumpable, 'silo.py still running');
unlike($silo_log, qr/Traceback|Error handling request/,
       'silo.py logged no exception') or diag($silo_log);

done_testing;
