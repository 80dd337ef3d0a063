# Events signed and checked by the fake homeserver (POST /_fake/sign_event
# and /_fake/check_event of t/tools/fake_hs.py, both on t/tools/mx_event.py),
# checked in turn by mx_event.py on its own and by the module's C core
# (matrix-tool sign-event, verify-event, event-id, redact), both ways;
# tampered and forged events fail; and check_event fetching the module's
# keys from its key server (a real nginx with the module).
#
#   make
#   MATRIX_TOOL=$PWD/build/matrix-tool TEST_NGINX_LOAD_MODULES=$PWD/build/ngx_http_matrix_module.so \
#       prove -I t/runner -I t/lib -v t/093-fake-events.t

use strict;
use warnings;

use Test::More;
use JSON::PP ();
use Storable qw(dclone);

use MatrixEventPy;
use MatrixFakeHS;
use MatrixNginx;
use MatrixTest qw(tool);

plan skip_all => 'apt-get install python3-aiohttp python3-signedjson '
               . 'python3-canonicaljson'
    unless MatrixFakeHS->available && MatrixEventPy->available;

my $JSON = JSON::PP->new->utf8->canonical;
my $fake = MatrixFakeHS->start(names => ['remote.test', 'auth.test']);
my $py = MatrixEventPy->start;

my ($KID, $PUB) = $fake->public_key('remote.test');
my %REMOTE = ('remote.test' => { $KID => $PUB });
# the C side signs as c.test with the spec's example key
my %C_KEYS = ('c.test' => { 'ed25519:1' => $MatrixTest::SPEC_PUBLIC_KEY });

my @VERSIONS = qw(6 8 9 10 11 12);

sub message {
    my ($origin, %more) = @_;
    return { type => 'm.room.message', sender => "\@alice:$origin",
             room_id => "!room:$origin",
             content => { msgtype => 'm.text', body => "h\x{e9}llo \x{2603}" },
             origin_server_ts => 1_700_000_000_000, depth => 7,
             prev_events => ['$prev'], auth_events => ['$a1', '$a2'],
             unsigned => { age => 12 }, %more };
}

sub create_v12 {
    my ($origin) = @_;
    return { type => 'm.room.create', state_key => '',
             sender => "\@alice:$origin",
             content => { room_version => '12', 'm.federate' => JSON::PP::true },
             origin_server_ts => 1_700_000_000_000, depth => 1,
             prev_events => [], auth_events => [] };
}

# ---------------------------------------------------------------- fake -> python

for my $rv (@VERSIONS) {
    my $s = $fake->sign_event('remote.test', $rv, message('remote.test'));
    my $ev = $s->{event};
    ok($ev->{hashes}{sha256} && $ev->{signatures}{'remote.test'}{$KID},
       "v$rv: the fake adds the hash and its signature");
    is($s->{event_id}, $py->event_id($ev, $rv),
       "v$rv: its event ID is mx_event.py's");
    my $r = $py->check($ev, $rv, \%REMOTE);
    is_deeply($r->{errors}, [], "v$rv: mx_event.py finds hash and "
              . 'signature right');
    is($py->content_hash($ev), $ev->{hashes}{sha256},
       "v$rv: content hash agrees");
}

my $s12 = $fake->sign_event('remote.test', 12, create_v12('remote.test'));
my $r12 = $fake->check_event(12, $s12->{event});
is($r12->{room_id}, '!' . substr($s12->{event_id}, 1),
   'v12 create: the room ID is derived from its event ID');
is_deeply($r12->{errors}, [], 'v12 create: checks out');

# ---------------------------------------------------------------- check_event

my $signed = $fake->sign_event('remote.test', 11, message('remote.test'))->{event};
my $r = $fake->check_event(11, $signed);
ok($r->{hash_ok} && $r->{signatures_ok} && !@{ $r->{errors} },
   'check_event: the fake\'s own event, its own keys') or diag explain $r;
is_deeply($r->{required_servers}, ['remote.test'], 'signed by the sender\'s server');
is_deeply($r->{redacted}, $py->redact($signed, 11), 'the redacted form');
is_deeply($fake->check_event(11, $signed, \%REMOTE)->{errors}, [],
          'with the keys given');

my %tamper = (
    content => [sub { $_[0]{content}{body} = 'changed' }, 1, 0],
    type => [sub { $_[0]{type} = 'm.room.topic' }, 0, 0],
    prev_events => [sub { $_[0]{prev_events} = ['$other'] }, 0, 0],
    origin_server_ts => [sub { $_[0]{origin_server_ts}++ }, 0, 0],
    signature => [sub { $_[0]{signatures}{'remote.test'}{$KID} =~
                        tr/A-Za-z/B-ZAb-za/ }, 0, 1],
);
for my $what (sort keys %tamper) {
    my ($change, $sig_ok, $hash_ok) = @{ $tamper{$what} };
    my $e = dclone($signed);
    $change->($e);
    my $c = $fake->check_event(11, $e);
    is(($c->{signatures_ok} ? 'sig ok' : 'sig bad') . ', '
       . ($c->{hash_ok} ? 'hash ok' : 'hash bad'),
       ($sig_ok ? 'sig ok' : 'sig bad') . ', ' . ($hash_ok ? 'hash ok' : 'hash bad'),
       "tampered $what");
    ok(scalar @{ $c->{errors} }, "tampered $what: errors say why");
    my $p = $py->check($e, 11, \%REMOTE);
    is(!!$p->{signatures_ok} . !!$p->{hash_ok},
       !!$c->{signatures_ok} . !!$c->{hash_ok},
       "tampered $what: mx_event.py agrees");
}

my $forged = $fake->sign_event('remote.test', 11, message('remote.test'),
                               forged => 1)->{event};
$r = $fake->check_event(11, $forged);
ok(!$r->{signatures_ok} && $r->{hash_ok}, 'a forged signature fails');
ok(!$fake->check_event(11, $signed, { 'remote.test' => {
        $KID => $MatrixTest::SPEC_PUBLIC_KEY } })->{signatures_ok},
   'keys given win over the fake\'s own');
$r = $fake->check_event(11, message('elsewhere.test'));
ok(!$r->{signatures_ok} && grep(/elsewhere\.test/, @{ $r->{errors} }),
   'an unsigned event of an unknown server fails, naming it');

# a restricted join needs the authorising server's signature too
my $join = { type => 'm.room.member', state_key => '@bob:remote.test',
             sender => '@bob:remote.test', room_id => '!room:auth.test',
             content => { membership => 'join',
                          join_authorised_via_users_server => '@mod:auth.test' },
             origin_server_ts => 1_700_000_000_000, depth => 9,
             prev_events => ['$p'], auth_events => ['$a'] };
my $half = $fake->sign_event('remote.test', 10, $join)->{event};
$r = $fake->check_event(10, $half);
ok(!$r->{signatures_ok} && grep(/auth\.test/, @{ $r->{errors} }),
   'restricted join signed by the joining server only: refused');
my $both = $fake->sign_event('auth.test', 10, $half);
$r = $fake->check_event(10, $both->{event});
is_deeply($r->{errors}, [], '... countersigned by auth.test: accepted');
is_deeply([sort keys %{ $both->{event}{signatures} }],
          ['auth.test', 'remote.test'], '... both signatures kept');

eval { $fake->check_event(99, $signed) };
like($@, qr/room_version/, 'an unknown room version is a 400');
eval { $fake->sign_event('nobody.test', 10, $join) };
like($@, qr/unknown name/, 'signing as a server the fake does not play: 400');

# ---------------------------------------------------------------- the C core

# matrix-tool ARGS with EVENT on stdin: (exit status, stdout, stderr)
sub c_tool {
    my ($args, $event) = @_;
    return tool($args, $JSON->encode($event));
}

SKIP: {
    skip 'MATRIX_TOOL is not set (make test sets it)', 1
        unless $ENV{MATRIX_TOOL};

    my $key = $ENV{TEST_NGINX_MATRIX_KEY};

    for my $rv (qw(10 11 12)) {
        for my $ev (message('c.test'), $rv == 12 ? create_v12('c.test') : ()) {
            my $what = "v$rv $ev->{type}";
            # C signs, the fake checks
            my ($rc, $out, $err) = c_tool(['sign-event', '--key', $key,
                '--server', 'c.test', '--room-version', $rv], $ev);
            is($rc, 0, "$what: matrix-tool signs") or diag $err;
            my $c_ev = $JSON->decode($out);
            my $c = $fake->check_event($rv, $c_ev, \%C_KEYS);
            is_deeply($c->{errors}, [], "$what: signed by C, checked by the fake");
            ($rc, $out) = c_tool(['event-id', '--room-version', $rv], $c_ev);
            is($out =~ s/\s+$//r, $c->{event_id}, "$what: the same event ID");
            ($rc, $out) = c_tool(['redact', '--room-version', $rv], $c_ev);
            is_deeply($JSON->decode($out), $c->{redacted},
                      "$what: the same redacted form");
            ok(!$fake->check_event($rv, $c_ev)->{signatures_ok},
               "$what: without c.test's key it does not verify");

            # the fake signs, C checks
            my $f = $fake->sign_event('remote.test', $rv,
                                      { %$ev, sender => '@alice:remote.test' });
            my @vkey = ('--key', "remote.test=$KID=$PUB");
            ($rc, $out, $err) = c_tool(['verify-event', '--room-version', $rv,
                                        @vkey], $f->{event});
            is("$rc $out" =~ s/\s+$//r, '0 ok',
               "$what: signed by the fake, verified by C") or diag $err;
            ($rc, $out) = c_tool(['event-id', '--room-version', $rv], $f->{event});
            is($out =~ s/\s+$//r, $f->{event_id}, "$what: C finds the same ID");
            my $t = dclone($f->{event});
            $t->{content}{tampered} = 1;
            ($rc, $out) = c_tool(['verify-event', '--room-version', $rv, @vkey],
                                 $t);
            isnt($rc, 0, "$what: tampered, C refuses it");
            my $forged = $fake->sign_event('remote.test', $rv,
                { %$ev, sender => '@alice:remote.test' }, forged => 1);
            ($rc) = c_tool(['verify-event', '--room-version', $rv, @vkey],
                           $forged->{event});
            isnt($rc, 0, "$what: forged, C refuses it");
        }
    }
}

# ---------------------------------------------------------------- keys fetched

# check_event without keys for the module's server: the fake fetches
# them from the module's own key server (GET /_matrix/key/v2/server of a
# real nginx), as it does for X-Matrix
SKIP: {
    skip 'MATRIX_TOOL and TEST_NGINX_LOAD_MODULES are not set (make test '
         . 'sets them)', 1
        unless $ENV{MATRIX_TOOL} && $ENV{TEST_NGINX_LOAD_MODULES};

    my $ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
EOF
        server => '        location /_matrix/ { matrix; }');
    $fake->configure_global({ keys => {
        'module.test' => 'http://127.0.0.1:' . $ngx->port } });

    my ($rc, $out, $err) = c_tool(['sign-event', '--key',
        $ENV{TEST_NGINX_MATRIX_KEY}, '--server', 'module.test',
        '--room-version', 11], message('module.test'));
    is($rc, 0, 'matrix-tool signs as module.test') or diag $err;
    my $ev = $JSON->decode($out);
    my $c = $fake->check_event(11, $ev);
    is_deeply($c->{errors}, [], 'check_event fetched module.test\'s keys '
              . 'from the module and the event checks out');
    $ev->{depth}++;
    ok(!$fake->check_event(11, $ev)->{signatures_ok},
       '... and a tampered one fails');

    $fake->reset;    # forgets the fetched keys
    $fake->configure_global({ keys => {
        'module.test' => 'http://127.0.0.1:1' } });
    $c = $fake->check_event(11, $ev);
    ok(!$c->{signatures_ok} && grep(/fetching the keys of module\.test/,
                                    @{ $c->{errors} }),
       'an unreachable key server is an error, named') or diag explain $c;
    $fake->configure_global({ keys => undef });
}

done_testing;
