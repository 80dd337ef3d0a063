# The independent event implementation of the federation tests
# (t/tools/mx_event.py, Debian's python3-signedjson and
# python3-canonicaljson; t/lib/MatrixEventPy.pm) against every case of
# ../shared/spec/vectors.json it can answer: canonical JSON (and the
# integer rules of room v6+), JSON signing, event hashing and signing,
# signature verification, event IDs and redaction. Each kind is also
# fed a mutated input, which must fail.
#
#   MX_VECTORS=../shared/spec/vectors.json \
#       prove -I t/runner -I t/lib -v t/092-python-event-selftest.t

use strict;
use warnings;

use Test::More;
use JSON::PP ();
use Storable qw(dclone);

use MatrixEventPy;

plan skip_all => 'apt-get install python3-signedjson python3-canonicaljson'
    unless MatrixEventPy->available;

my $file = $ENV{MX_VECTORS} // '../shared/spec/vectors.json';
open my $fh, '<:raw', $file or die "$file: $! (set MX_VECTORS)";
my $V = JSON::PP->new->utf8->decode(do { local $/; <$fh> });
close $fh;

my $py = MatrixEventPy->start;

my $SK = $V->{signing_key};
my $KEY = "ed25519 1 $SK->{seed_base64}";
my %KEYS = (domain => { $SK->{key_id} => $SK->{public_key_base64_derived} });
# the same key ID, another key (of the seed "AAA..."): every signature
# must fail under it
my %WRONG = (domain => { $SK->{key_id} => '25lf4lFp0UHKubu6krqgH58uHs599MsqwFGQ83/MH50' });

sub name_of { $_[0]{path} // $_[0]{name} // $_[0]{origin} }

# ---------------------------------------------------------------- JSON

for my $c (@{ $V->{canonical_json}{cases} }) {
    is($py->call('canonical_text', text => $c->{input}), $c->{expected},
       'canonical JSON: ' . JSON::PP->new->ascii->encode([$c->{input}]));
}

for my $c (@{ $V->{canonical_json_strict_validation}{cases} }) {
    my $e6 = $py->call('strict_json_errors', text => $c->{input},
                       room_version => '6');
    is(!@$e6 ? 1 : 0, $c->{valid_v6plus} ? 1 : 0,
       "v6+ integers: $c->{name}") or diag explain $e6;
    next unless exists $c->{valid_v1};
    my $e1 = $py->call('strict_json_errors', text => $c->{input},
                       room_version => '1');
    is(!@$e1 ? 1 : 0, $c->{valid_v1} ? 1 : 0, "v1 tolerates: $c->{name}");
}

for my $c (@{ $V->{json_signing}{cases} }) {
    my $got = $py->call('sign_json', json => $c->{input}, server => 'domain',
                        key => $KEY);
    is_deeply($got, $c->{expected}, 'JSON signing: ' . name_of($c));
    my $bad = $py->verify({ %$got, type => 'x', sender => '@a:domain' }, '1',
                          \%KEYS, ['domain']);
    ok(@$bad, 'JSON signing: a changed object no longer verifies');
}

# ---------------------------------------------------------------- signing

for my $c (@{ $V->{event_signing}{cases} }) {
    my $rv = $c->{room_version_redaction_rules};
    my $n = name_of($c);
    my $signed = $py->sign($c->{input}, 'domain', $KEY, $rv);
    is_deeply($signed, $c->{expected_signed_event}, "event signing: $n");
    is($py->content_hash($c->{input}), $c->{expected_hashes_sha256},
       "content hash: $n");
    is_deeply($py->verify($signed, $rv, \%KEYS, ['domain']), [],
              "its signature verifies: $n");

    # a changed type (kept by redaction) breaks the signature; changed
    # content breaks the content hash
    my $t = dclone($signed);
    $t->{type} .= '.changed';
    ok(scalar @{ $py->verify($t, $rv, \%KEYS, ['domain']) },
       "a changed type breaks the signature: $n");
    my $m = dclone($signed);
    $m->{content}{mutated} = 1;
    isnt($py->content_hash($m), $c->{expected_hashes_sha256},
         "changed content changes the content hash: $n");
    ok(!$py->call('check', event => $m, room_version => $rv,
                  keys => \%KEYS)->{hash_ok},
       "changed content fails the hash check: $n");
    ok(scalar @{ $py->verify($signed, $rv, \%WRONG, ['domain']) },
       "another key under the same ID fails: $n");
}

for my $c (@{ $V->{event_signature_verification}{cases} }) {
    my $errors = $py->verify($c->{event}, '1', \%KEYS, ['domain']);
    is(!@$errors ? 1 : 0, $c->{signature_valid} ? 1 : 0,
       "signature verification: $c->{name}") or diag explain $errors;
    if (exists $c->{content_hash_matches}) {
        my $r = $py->check($c->{event}, '1', \%KEYS);
        is($r->{hash_ok} ? 1 : 0, $c->{content_hash_matches} ? 1 : 0,
           "content hash check: $c->{name}");
    }
    next unless $c->{signature_valid};
    ok(scalar @{ $py->verify($c->{event}, '1', \%WRONG, ['domain']) },
       "... and under another key it fails: $c->{name}");
    ok(scalar @{ $py->verify($c->{event}, '1', {}, ['domain']) },
       "... and with no key known it fails: $c->{name}");
}

# ---------------------------------------------------------------- IDs

for my $c (@{ $V->{event_ids_reference_hash}{cases} }) {
    my $n = name_of($c);
    if (exists $c->{expected_content_hash}) {
        is($py->content_hash($c->{event}), $c->{expected_content_hash},
           "content hash of a real event: $n");
        my $m = dclone($c->{event});
        $m->{origin_server_ts}++;
        isnt($py->content_hash($m), $c->{expected_content_hash},
             "... changed, it differs: $n");
    }
    next unless exists $c->{expected_event_id};
    my @versions = $c->{room_version} =~ /^(\d+)\.\.(\d+)$/
                 ? ($1 .. $2) : ($c->{room_version});
    for my $rv (@versions) {
        is($py->event_id($c->{event}, $rv), $c->{expected_event_id},
           "event ID, room v$rv: $n");
        next if $rv <= 2;    # taken from the event as it is
        my $m = dclone($c->{event});
        $m->{origin_server_ts}++;
        isnt($py->event_id($m, $rv), $c->{expected_event_id},
             "a changed origin_server_ts changes it, v$rv: $n");
        my $r = dclone($c->{event});
        $r->{unsigned} = { age => 1 };
        $r->{signatures} = { other => { 'ed25519:x' => 'AAAA' } };
        is($py->event_id($r, $rv), $c->{expected_event_id},
           "unsigned and signatures do not change it, v$rv: $n");
    }
}

# ---------------------------------------------------------------- redaction

for my $c (@{ $V->{redaction}{cases} }) {
    my $n = "v$c->{room_version}: " . name_of($c);
    is_deeply($py->redact($c->{input}, $c->{room_version}), $c->{expected},
              "redaction, $n");
    # what redaction strips must not survive it
    my $m = dclone($c->{input});
    $m->{x_mutated} = 1;
    $m->{content}{x_mutated} = 1 if ref $m->{content} eq 'HASH'
        && $m->{type} ne 'm.room.create';
    $m->{unsigned} = { x => 1 };
    is_deeply($py->redact($m, $c->{room_version}), $c->{expected},
              "redaction strips added keys, $n");
}

# ---------------------------------------------------------------- beyond the vectors

# room v12: the create event has no room_id, the room ID is its event ID
# with "!"; a create event with a room_id is refused
my $create = $py->sign({ type => 'm.room.create', state_key => '',
                         sender => '@a:domain', content => {
                             room_version => '12' },
                         origin_server_ts => 1, depth => 1,
                         prev_events => [], auth_events => [] },
                       'domain', $KEY, '12');
my $r = $py->check($create, '12', \%KEYS);
is_deeply($r->{errors}, [], 'v12 create event: hash and signature hold');
like($r->{event_id}, qr/^\$[A-Za-z0-9_-]{43}$/, 'v12: URL-safe event ID');
is($r->{room_id}, '!' . substr($r->{event_id}, 1),
   'v12: the room ID is the event ID with "!"');
my $with_room = $py->sign({ %$create, room_id => '!x:domain' }, 'domain',
                          $KEY, '12');
ok(scalar(grep { /room_id/ } @{ $py->check($with_room, '12', \%KEYS)
                                    ->{errors} }),
   'v12: a create event with a room_id is refused');

# who must sign: the sender's server; from v8 on also the server of
# join_authorised_via_users_server
my $join = { type => 'm.room.member', state_key => '@j:domain',
             sender => '@j:domain', room_id => '!r:domain',
             content => { membership => 'join',
                          join_authorised_via_users_server => '@m:auth.example' },
             origin_server_ts => 1, depth => 3, prev_events => [],
             auth_events => [] };
$r = $py->check($py->sign($join, 'domain', $KEY, '10'), '10', \%KEYS);
is_deeply($r->{required_servers}, ['auth.example', 'domain'],
          'a restricted join needs the authorising server too');
ok(!$r->{signatures_ok} && grep(/auth\.example/, @{ $r->{errors} }),
   '... and fails without its signature');
is_deeply($py->check($join, '8', {})->{required_servers},
          ['auth.example', 'domain'], '... from v8 on');
is_deeply($py->check($join, '7', {})->{required_servers}, ['domain'],
          'before v8 only the sender\'s server');

# a fully checked event, then one field tampered with at a time
my $msg = $py->sign({ type => 'm.room.message', sender => '@a:domain',
                      room_id => '!r:domain', content => { body => 'hi' },
                      origin_server_ts => 5, depth => 4,
                      prev_events => ['$p'], auth_events => ['$a'] },
                    'domain', $KEY, '11');
$r = $py->check($msg, '11', \%KEYS);
ok($r->{hash_ok} && $r->{signatures_ok} && !@{ $r->{errors} },
   'a signed v11 message checks out') or diag explain $r;
is($r->{event_id}, $py->event_id($msg, '11'), 'check gives its event ID');
for my $t (['content', sub { $_[0]{content}{body} = 'bye' }, 1, 0],
           ['depth', sub { $_[0]{depth}++ }, 0, 0],
           ['prev_events', sub { push @{ $_[0]{prev_events} }, '$q' }, 0, 0],
           ['hashes', sub { $_[0]{hashes}{sha256} =~ tr/A-Za-z/B-ZAb-za/ }, 0, 0],
           ['unsigned', sub { $_[0]{unsigned} = { age => 5 } }, 1, 1]) {
    my ($what, $change, $sig_ok, $hash_ok) = @$t;
    my $e = dclone($msg);
    $change->($e);
    my $c = $py->check($e, '11', \%KEYS);
    is(($c->{signatures_ok} ? 1 : 0) . ($c->{hash_ok} ? 1 : 0),
       "$sig_ok$hash_ok", "tampered $what: signature "
       . ($sig_ok ? 'holds' : 'fails') . ', hash ' . ($hash_ok ? 'holds' : 'fails'));
}

# floats and large integers are refused from v6 on
$r = $py->check($py->sign({ %$msg, content => { n => 1152921504606846976 } }, 'domain',
                          $KEY, '11'), '11', \%KEYS);
ok(scalar(grep { /out of range/ } @{ $r->{errors} }),
   'v11: an integer beyond 2^53 is refused');

done_testing;
