# PDU hashes, signatures, event IDs and redaction (matrix-tool sign-event,
# verify-event, event-id, redact) against an independent implementation:
# Debian's python3-signedjson and python3-canonicaljson, with the content
# hash, the reference hash and the redaction algorithm of room versions
# 10 and 11 written afresh below from the spec (server-server-api.md:
# Signing Events; rooms/fragments/v9-redactions.md, v11-redactions.md).
#
#   make build/matrix-tool
#   MATRIX_TOOL=$PWD/build/matrix-tool prove -v t/041-event-differential.t
#
# The random events come from a fixed seed; MATRIX_EVENT_SEED=N tries
# another one, and a failing run prints the seed to replay it.

use strict;
use warnings;
use utf8;

use Test::More;
use File::Temp qw(tempdir);
use IPC::Run qw(run timeout);
use JSON::PP ();

use MatrixTest qw(write_file tool python visible);

plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};


# seeds of the three servers' keys: C signs as c.example, Python as
# py.example, and as auth.example for restricted joins it authorises
my $C_SEED = 'YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1';
my $PY_SEED = 'nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A';
my $AUTH_SEED = 'QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE';

my $N = 50;

my $dir = tempdir('event-diff-XXXXXX', TMPDIR => 1, CLEANUP => 1);

$SIG{PIPE} = 'IGNORE';

my $JSON = JSON::PP->new->utf8->canonical;








# ---------------------------------------------------------------- python

# The independent side.  stdin: {"mode": ..., "items": [...]}, stdout:
# {"results": [...], "pub": {...}}.  Events travel as hex of their bytes,
# so that no decoding on the way (Perl's strict UTF-8 replaces
# noncharacters such as U+10FFFF) can make the two sides see different
# strings.
my $PY = <<'PY';
import base64, hashlib, sys
import signedjson.key, signedjson.sign
from canonicaljson import json, encode_canonical_json
from unpaddedbase64 import encode_base64, decode_base64

# rooms/fragments/v9-redactions.md (v9, v10) and v11-redactions.md
TOP = {
    10: {"event_id", "type", "room_id", "sender", "state_key", "content",
         "hashes", "signatures", "depth", "prev_events", "prev_state",
         "auth_events", "origin", "origin_server_ts", "membership"},
    11: {"event_id", "type", "room_id", "sender", "state_key", "content",
         "hashes", "signatures", "depth", "prev_events", "auth_events",
         "origin_server_ts"},
}
PL = ["ban", "events", "events_default", "kick", "redact", "state_default",
      "users", "users_default"]
CONTENT = {
    10: {"m.room.member": ["membership", "join_authorised_via_users_server"],
         "m.room.create": ["creator"],
         "m.room.join_rules": ["join_rule", "allow"],
         "m.room.power_levels": PL,
         "m.room.history_visibility": ["history_visibility"]},
    11: {"m.room.member": ["membership", "join_authorised_via_users_server"],
         "m.room.create": None,
         "m.room.join_rules": ["join_rule", "allow"],
         "m.room.power_levels": PL + ["invite"],
         "m.room.history_visibility": ["history_visibility"],
         "m.room.redaction": ["redacts"]},
}

def rules(version):
    return 11 if int(version) >= 11 else 10

def redact(ev, version):
    r = rules(version)
    out = {k: v for k, v in ev.items() if k in TOP[r]}
    content = ev.get("content")
    if not isinstance(content, dict):
        content = {}
    keep = CONTENT[r].get(ev.get("type"), [])
    if keep is None:
        new = dict(content)
    else:
        new = {k: v for k, v in content.items() if k in keep}
    if r >= 11 and ev.get("type") == "m.room.member":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            new["third_party_invite"] = {"signed": tpi["signed"]}
    out["content"] = new
    return out

def content_hash(ev):
    stripped = {k: v for k, v in ev.items()
                if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()

def event_id(ev, version):
    red = redact(ev, version)
    red.pop("signatures", None)
    red.pop("unsigned", None)
    h = hashlib.sha256(encode_canonical_json(red)).digest()
    return "$" + base64.urlsafe_b64encode(h).decode().rstrip("=")

def key(seed, name):
    return signedjson.key.decode_signing_key_base64("ed25519", name, seed)

def server_of(user_id):
    return user_id.split(":", 1)[1]

req = json.loads(sys.stdin.buffer.read())
keys = {server: key(seed, "1") for server, seed in req["keys"].items()}
results = []

if req["mode"] == "check":
    # events signed by matrix-tool: check them all independently
    vk = signedjson.key.get_verify_key(keys["c.example"])
    for item in req["items"]:
        version, raw = item["version"], bytes.fromhex(item["signed_hex"])
        r = {}
        try:
            ev = json.loads(raw)
            r["canonical"] = encode_canonical_json(ev) == raw
            want = content_hash(ev)
            got = decode_base64(ev["hashes"]["sha256"])
            r["content_hash"] = got == want
            try:
                signedjson.sign.verify_signed_json(
                    redact(ev, version), "c.example", vk)
                r["signature"] = True
            except Exception as e:
                r["signature"] = False
                r["why"] = repr(e)
            r["event_id"] = event_id(ev, version)
            r["redacted_hex"] = encode_canonical_json(
                redact(ev, version)).hex()
        except Exception as e:
            r["error"] = repr(e)
        results.append(r)

elif req["mode"] == "sign":
    # hash and sign as the origin does: hash, redact, sign, copy back
    for item in req["items"]:
        version, ev = item["version"], item["event"]
        ev["hashes"] = {"sha256": encode_base64(content_hash(ev))}
        signers = ["py.example"]
        via = ev.get("content", {}).get("join_authorised_via_users_server")
        if item.get("cosign") and via:
            signers.append(server_of(via))
        for server in signers:
            red = signedjson.sign.sign_json(redact(ev, version), server,
                                            keys[server])
            ev.setdefault("signatures", {}).setdefault(server, {}).update(
                red["signatures"][server])
        results.append({
            "signed_hex": encode_canonical_json(ev).hex(),
            "event_id": event_id(ev, version),
            "redacted_hex": encode_canonical_json(redact(ev, version)).hex(),
            "redacted_hash_ok":
                content_hash(redact(ev, version)) == content_hash(ev),
        })

pub = {s: signedjson.key.encode_verify_key_base64(k.verify_key)
       for s, k in keys.items()}
sys.stdout.write(json.dumps({"results": results, "pub": pub},
                            ensure_ascii=True))
PY


# ---------------------------------------------------------------- events

my $seed = $ENV{MATRIX_EVENT_SEED} // 41_041;
srand($seed);

my @special = ("\x{e9}", "\x{2603}", "\x{1f600}", "\x{65e5}\x{672c}",
               "\x{2028}", "\x{7f}", "\x{fffd}", "e\x{301}", "\n", "\t",
               "\x{1}", '"', '\\', '/', "\x{10ffff}");

sub rand_string {
    my ($max) = @_;
    my $s = '';

    for (1 .. int rand($max // 12)) {
        $s .= rand() < 0.7 ? chr(0x20 + int rand 95)
                           : $special[int rand @special];
    }

    return $s;
}

sub rand_id {
    my ($sigil, $server) = @_;
    my @c = ('a' .. 'z', '0' .. '9');
    my $local = join '', map { $c[int rand @c] } 1 .. 3 + int rand 8;

    return defined $server ? "$sigil$local:$server" : "$sigil$local";
}

sub rand_event_id {
    my @c = ('A' .. 'Z', 'a' .. 'z', '0' .. '9', '-', '_');

    return '$' . join '', map { $c[int rand @c] } 1 .. 43;
}

sub rand_int {
    my $r = rand;

    return (0, 1, -1, 9007199254740991, -9007199254740991)[int rand 5]
        if $r < 0.15;

    return int(rand 2001) - 1000;
}

sub rand_value {
    my ($depth) = @_;
    my $r = rand;

    return { map { rand_string(6) => rand_value($depth + 1) }
             1 .. int rand 4 }
        if $depth < 3 && $r < 0.2;

    return [ map { rand_value($depth + 1) } 1 .. int rand 4 ]
        if $depth < 3 && $r < 0.35;

    return rand_string() if $r < 0.65;
    return rand_int() if $r < 0.85;
    return (JSON::PP::true, JSON::PP::false, undef)[int rand 3];
}

sub extras {
    my %h = @_;

    $h{rand_string(8) . '_x'} = rand_value(0) for 1 .. int rand 3;

    return \%h;
}

# One random PDU of the given room version, sent from $server.
sub rand_event {
    my ($version, $server) = @_;
    my $sender = rand_id('@', $server);
    # members weigh more: they carry most of the version differences
    my $kind = (0, 0, 1, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7, 8, 9, 10)[int rand 16];
    my ($type, $state_key, $content);
    my %top;

    if ($kind <= 2) {
        $type = 'm.room.message';
        $content = extras(msgtype => 'm.text', body => rand_string(40));

    } elsif ($kind == 3) {
        $type = 'm.room.member';
        $state_key = $sender;
        my $m = ('join', 'join', 'invite', 'invite', 'leave', 'ban',
                 'knock')[int rand 7];
        $content = extras(membership => $m, displayname => rand_string());

        if ($m eq 'join' && rand() < 0.6) {
            $content->{join_authorised_via_users_server}
                = rand_id('@', 'auth.example');
        }

        if ($m eq 'invite' && rand() < 0.6) {
            $state_key = rand_id('@', 'elsewhere.example');
            $content->{third_party_invite} = {
                display_name => rand_string(),
                signed => { mxid => $state_key, token => rand_string(),
                            signatures => { 'id.example' =>
                                { 'ed25519:0' => 'c2ln' } } },
            };
        }

    } elsif ($kind == 4) {
        $type = 'm.room.power_levels';
        $state_key = '';
        $content = extras(
            users => { $sender => 100, rand_id('@', 'x.example') => 50 },
            events => { 'm.room.name' => 50, 'm.room.power_levels' => 100 },
            invite => 0, ban => 50, kick => 50, redact => 50,
            users_default => 0, events_default => 0, state_default => 50,
            notifications => { room => 50 });

    } elsif ($kind == 5) {
        $type = 'm.room.create';
        $state_key = '';
        $content = extras(room_version => $version,
                          ($version < 11 ? (creator => $sender) : ()));

    } elsif ($kind == 6) {
        $type = 'm.room.join_rules';
        $state_key = '';
        $content = extras(join_rule => 'restricted',
                          allow => [{ type => 'm.room_membership',
                                      room_id => rand_id('!', 'x.example') }]);

    } elsif ($kind == 7) {
        $type = 'm.room.redaction';
        my $target = rand_event_id();
        $content = extras(reason => rand_string());

        if ($version >= 11) {
            $content->{redacts} = $target;
        } else {
            $top{redacts} = $target;
        }

    } elsif ($kind == 8) {
        $type = 'm.room.history_visibility';
        $state_key = '';
        $content = extras(history_visibility => 'shared');

    } elsif ($kind == 9) {
        $type = 'm.room.name';
        $state_key = '';
        $content = extras(name => rand_string(30));

    } else {
        $type = 'org.example.' . join '', map { ('a' .. 'z')[int rand 26] }
                                              1 .. 6;
        $state_key = rand_string(10);
        $content = extras();
    }

    my %ev = (
        type => $type,
        room_id => rand_id('!', 'c.example'),
        sender => $sender,
        content => $content,
        depth => 1 + int rand 100_000,
        origin_server_ts => 1_600_000_000_000 + int rand 100_000_000_000,
        auth_events => [ map { rand_event_id() } 1 .. int rand 4 ],
        prev_events => [ map { rand_event_id() } 1 .. 1 + int rand 2 ],
        %top,
    );

    $ev{state_key} = $state_key if defined $state_key;
    $ev{origin} = $server if rand() < 0.5;
    $ev{unsigned} = { age => int rand 1000, note => rand_string() }
        if rand() < 0.4;
    $ev{prev_state} = [] if $version < 11 && rand() < 0.2;

    return \%ev;
}


my ($py_rc, undef, $py_err) = python(
    'import canonicaljson, signedjson.key, signedjson.sign, unpaddedbase64',
    '');

plan skip_all => "no python3-canonicaljson/python3-signedjson: $py_err"
    if $py_rc != 0;

my $keys = { 'c.example' => $C_SEED, 'py.example' => $PY_SEED,
             'auth.example' => $AUTH_SEED };

my $c_key = write_file("$dir/c.key", "ed25519 1 $C_SEED\n");


# ---------------------------------------------------------------- C signs

{
    my (@items, @ids, @redacted, @fails);

    for my $i (0 .. $N - 1) {
        my $version = (10, 11)[$i % 2];
        my $in = $JSON->encode(rand_event($version, 'c.example'));

        my ($rc, $out, $err) = tool(['sign-event', '--key', $c_key,
                                     '--server', 'c.example',
                                     '--room-version', $version], $in);
        push @fails, "event $i: sign-event exit $rc: $err" if $rc ne '0';

        my ($irc, $id) = tool(['event-id', '--room-version', $version], $out);
        chomp $id;
        my ($rrc, $red) = tool(['redact', '--room-version', $version], $out);

        push @items, { version => $version, signed => $out, input => $in };
        push @ids, $id;
        push @redacted, $red;
    }

    my ($rc, $out, $err) = python($PY, $JSON->encode(
        { mode => 'check', keys => $keys,
          items => [ map { { version => $_->{version},
                             signed_hex => unpack('H*', $_->{signed}) } }
                     @items ] }));

    my $res = eval { $JSON->decode($out) } // { results => [] };

    subtest "matrix-tool sign-event, Python checks: $N random events"
            => sub {
        plan tests => 2 + 6 * $N;

        is(scalar @fails, 0, 'sign-event signed every event')
            or diag(join "\n", @fails);
        is(scalar @{$res->{results}}, $N, 'python checked them all')
            or diag("exit $rc: $err");

        for my $i (0 .. $N - 1) {
            my $r = $res->{results}[$i] // { error => 'no result' };
            my $what = "event $i (v$items[$i]{version})";

            diag("$what: python: $r->{error}\ninput: "
                 . visible($items[$i]{input})) if $r->{error};

            ok($r->{canonical}, "$what: the output is canonical JSON");
            ok($r->{content_hash}, "$what: hashes.sha256 is Python's "
               . 'content hash');
            ok($r->{signature}, "$what: signedjson verifies the signature "
               . 'over the redacted event') or diag($r->{why} // '');
            is($ids[$i], $r->{event_id} // '',
               "$what: event-id equals Python's reference hash ID");
            is(visible($redacted[$i]),
               visible(pack('H*', $r->{redacted_hex} // '')),
               "$what: redact equals Python's redaction");

            my ($vrc, $vout, $verr) = tool(
                ['verify-event', '--room-version', $items[$i]{version},
                 '--key', "c.example=ed25519:1=" . ($res->{pub}{'c.example'}
                                                   // 'none')],
                $items[$i]{signed});

            # a restricted join also needs auth.example, which C lacks
            my $ev = eval { $JSON->decode($items[$i]{signed}) } // {};
            my $needs_auth = ($ev->{type} // '') eq 'm.room.member'
                && ($ev->{content}{membership} // '') eq 'join'
                && exists $ev->{content}{join_authorised_via_users_server};

            if ($needs_auth) {
                ok($vrc eq '1' && $verr =~ /not signed by auth\.example/,
                   "$what: verify-event wants the authorising server's "
                   . 'signature') or diag("exit $vrc: $verr");
            } else {
                ok($vrc eq '0' && $vout eq "ok\n",
                   "$what: verify-event accepts its own signature")
                    or diag("exit $vrc: $verr");
            }
        }
    };
}


# ---------------------------------------------------------------- Python signs

{
    my @items;

    for my $i (0 .. $N - 1) {
        my $version = (11, 10)[$i % 2];

        # every 7th restricted join is signed by the joiner only
        push @items, { version => $version,
                       event => rand_event($version, 'py.example'),
                       cosign => $i % 7 != 3 };
    }

    my ($rc, $out, $err) = python($PY, $JSON->encode(
        { mode => 'sign', keys => $keys, items => \@items }));

    my $res = eval { $JSON->decode($out) } // { results => [], pub => {} };
    my @key_args = map { ('--key', "$_=ed25519:1=" . ($res->{pub}{$_}
                                                      // 'none')) }
                   qw(py.example auth.example);

    subtest "Python signs, matrix-tool verify-event and event-id: "
            . "$N random events" => sub {
        plan tests => 1 + 5 * $N;

        is(scalar @{$res->{results}}, $N, 'python signed them all')
            or diag("exit $rc: $err");

        for my $i (0 .. $N - 1) {
            my $r = $res->{results}[$i] // {};
            my $signed = pack('H*', $r->{signed_hex} // '');
            my $version = $items[$i]{version};
            my $what = "event $i (v$version, $items[$i]{event}{type})";
            my $c = $items[$i]{event}{content};
            my $auth_missing = !$items[$i]{cosign}
                && $items[$i]{event}{type} eq 'm.room.member'
                && $c->{membership} eq 'join'
                && exists $c->{join_authorised_via_users_server};

            my ($vrc, $vout, $verr) = tool(
                ['verify-event', '--room-version', $version, @key_args],
                $signed);

            if ($auth_missing) {
                ok($vrc eq '1' && $verr =~ /not signed by auth\.example/,
                   "$what: restricted join without the authorising "
                   . 'signature refused') or diag("exit $vrc: $verr");
            } else {
                ok($vrc eq '0' && $vout eq "ok\n",
                   "$what: verify-event accepts signedjson's signatures")
                    or diag("exit $vrc: $verr\nevent: " . visible($signed));
            }

            my ($irc, $id, $ierr) = tool(['event-id', '--room-version',
                                          $version], $signed);
            is($id, ($r->{event_id} // 'none') . "\n",
               "$what: event-id equals Python's") or diag($ierr);

            # the content changed: signature still good, hash not
            my $ev = eval { $JSON->decode($signed) } // {};
            $ev->{content}{tampered} = JSON::PP::true;
            ($vrc, $vout, $verr) = tool(
                ['verify-event', '--room-version', $version, @key_args],
                $JSON->encode($ev));
            # (v11 keeps, and so signs, all of a create event's content)
            if ($items[$i]{event}{type} eq 'm.room.create' && $version >= 11) {
                ok($vrc eq '1' && $verr =~ /does not verify|not signed/,
                   "$what: changed content fails the signature")
                    or diag("exit $vrc: $verr");
            } else {
                ok($vrc eq '1' && ($auth_missing
                       || $verr =~ /content hash mismatch: the event must be redacted/),
                   "$what: changed content is a content hash mismatch")
                    or diag("exit $vrc: $verr");
            }

            # the redacted copy (Python's): signature still good
            ($vrc, $vout, $verr) = tool(
                ['verify-event', '--room-version', $version, @key_args],
                pack('H*', $r->{redacted_hex} // ''));
            ok($auth_missing ? $vrc eq '1'
               : $r->{redacted_hash_ok} ? $vrc eq '0'
               : $vrc eq '1'
                 && $verr =~ /content hash mismatch: the event must be redacted/,
               "$what: Python's redacted copy passes the signature check")
                or diag("exit $vrc: $verr");

            # a signed field changed: the signature no longer holds
            $ev = eval { $JSON->decode($signed) } // {};
            $ev->{origin_server_ts}++;
            ($vrc, $vout, $verr) = tool(
                ['verify-event', '--room-version', $version, @key_args],
                $JSON->encode($ev));
            ok($vrc eq '1' && $verr =~ /does not verify|not signed/,
               "$what: a changed origin_server_ts fails the signature")
                or diag("exit $vrc: $verr");
        }
    };
}


# ---------------------------------------------------------------- usage

{
    my $ev = $JSON->encode(rand_event(10, 'c.example'));

    my ($rc, $out, $err) = tool(['event-id', '--room-version', '99'], $ev);
    ok($rc eq '1' && $err =~ /unsupported room version "99"/,
       'event-id: an unknown room version is exit 1');

    ($rc, $out, $err) = tool(['event-id'], $ev);
    ok($rc eq '2' && $err =~ /--room-version is required/,
       'event-id: no room version is a usage error');

    ($rc, $out, $err) = tool(['verify-event', '--room-version', '10'], $ev);
    ok($rc eq '2' && $err =~ /at least one --key/,
       'verify-event: no key is a usage error');

    ($rc, $out, $err) = tool(['verify-event', '--room-version', '10',
                              '--key', 'ed25519:1=abc'], $ev);
    ok($rc eq '2' && $err =~ /SERVER=ed25519:ID=BASE64/,
       'verify-event: a key without a server is a usage error');

    ($rc, $out, $err) = tool(['sign-event', '--key', $c_key,
                              '--server', 'c.example',
                              '--room-version', '10'], '{"type":"x"}');
    ok($rc eq '1' && $err =~ /not a valid PDU/,
       'sign-event: refuses to sign what is not a PDU');

    ($rc, $out, $err) = tool(['sign-event', '--key', $c_key,
                              '--server', 'c.example',
                              '--room-version', '10'], '{"depth":1.5}');
    ok($rc eq '1', 'sign-event: refuses a real in room version 10');
}


# ---------------------------------------------------------------- auth-check

{
    my $sign = sub {
        my ($ev) = @_;
        my ($rc, $out) = tool(['sign-event', '--key', $c_key,
                               '--server', 'c.example',
                               '--room-version', '11'], $JSON->encode($ev));
        my ($irc, $id) = tool(['event-id', '--room-version', '11'], $out);
        chomp $id;
        return (eval { $JSON->decode($out) } // {}, $id);
    };

    my %base = (room_id => '!room:c.example', sender => '@a:c.example',
                origin_server_ts => 1, prev_events => []);

    my ($create, $c) = $sign->({ %base, type => 'm.room.create',
                                 state_key => '', depth => 1,
                                 auth_events => [],
                                 content => { room_version => '11' } });
    my ($member, $m) = $sign->({ %base, type => 'm.room.member',
                                 state_key => '@a:c.example', depth => 2,
                                 auth_events => [$c],
                                 content => { membership => 'join' } });
    my ($pl, $p) = $sign->({ %base, type => 'm.room.power_levels',
                             state_key => '', depth => 3,
                             auth_events => [$c, $m],
                             content => { users => { '@a:c.example' => 100 },
                                          events_default => 0 } });
    my ($msg) = $sign->({ %base, type => 'm.room.message', depth => 4,
                          auth_events => [$c, $m, $p],
                          content => { body => "h\x{e9}llo" } });
    my ($stranger) = $sign->({ %base, sender => '@b:c.example',
                               type => 'm.room.message', depth => 4,
                               auth_events => [$c, $p],
                               content => { body => 'hi' } });

    my ($rc, $out, $err) = tool(['auth-check', '--room-version', '11'],
        $JSON->encode({ event => $msg, auth_events => [$create, $member,
                                                       $pl] }));
    ok($rc eq '0' && $out eq "allowed\n",
       'auth-check: a member\'s message is allowed')
        or diag("exit $rc: $out$err");

    ($rc, $out, $err) = tool(['auth-check', '--room-version', '11'],
        $JSON->encode({ event => $stranger, auth_events => [$create,
                                                            $pl] }));
    ok($rc eq '1' && $out =~ /\Arefused: rule \d/,
       'auth-check: a non-member\'s message is refused, the rule named')
        or diag("exit $rc: $out$err");

    ($rc, $out, $err) = tool(['auth-check', '--room-version', '11'],
                             '{"event":{}}');
    ok($rc eq '1' && $err =~ /expected \{"event"/,
       'auth-check: input of the wrong shape is exit 1');
}

done_testing();

diag("random seed $seed: MATRIX_EVENT_SEED=$seed replays this run")
    unless Test::More->builder->is_passing;
