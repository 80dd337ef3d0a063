# The federation test fixtures, checked with clients that owe nothing to
# the module: t/tools/make_test_ca.sh (openssl), MatrixFakeHS
# (t/tools/fake_hs.py) through curl --cacert over real TLS with SNI per
# name, its documents through Debian's python3-signedjson (and
# t/tools/check_key_doc.py), and MatrixDNS through dig, over UDP and TCP.
#
#   MATRIX_BUILD_DIR=$PWD/build MATRIX_TOOL=$PWD/build/matrix-tool \
#       prove -I t/runner -I t/lib -v t/090-fixtures-selftest.t

use strict;
use warnings;

use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use IPC::Run qw(run timeout);
use JSON::PP ();
use Time::HiRes qw(time sleep);

use MatrixFakeHS;
use MatrixDNS;
use MatrixTest qw(python);

plan skip_all => 'apt-get install python3-aiohttp python3-signedjson '
               . 'python3-canonicaljson'
    unless MatrixFakeHS->available;
plan skip_all => 'apt-get install curl openssl'
    unless -x '/usr/bin/curl' && -x '/usr/bin/openssl';

my $JSON = JSON::PP->new->utf8->canonical;
my $TOOLS = "$FindBin::Bin/tools";
my $CHECK_KEY_DOC = "$TOOLS/check_key_doc.py";

# a start, as the federation tests will use it
my $t0 = time;
my $fake = MatrixFakeHS->start(names => ['remote.test', 'notary.test'],
                               aliases => { 'remote.test' => ['target.test'] });
my $start_time = time - $t0;
cmp_ok($start_time, '<', 1, 'the fake starts in under a second')
    or diag(sprintf '%.3f s', $start_time);

my $PORT = $fake->port;


# ---------------------------------------------------------------- helpers

# curl over TLS to NAME on the fake, trusting its CA unless cacert is
# given: {exit, status, head, body, err, seconds}
sub fetch {
    my ($name, $path, %o) = @_;

    my $port = $o{port} // $PORT;
    my @cmd = ('curl', '-sS', '-i', '--max-time', $o{max_time} // 10,
               '--resolve', "$name:$port:127.0.0.1",
               defined $o{cacert} ? ($o{cacert} ? ('--cacert', $o{cacert}) : ())
                                  : ('--cacert', $fake->ca_file),
               @{ $o{args} || [] }, "https://$name:$port$path");
    my ($out, $err) = ('', '');
    my $t = time;
    run \@cmd, '<', \'', '>', \$out, '2>', \$err, timeout(30);
    my %r = (exit => $? >> 8, err => $err, seconds => time - $t,
             status => 0, head => '', body => '');

    if ($out =~ /^HTTP\/[\d.]+ (\d+)/) {
        $r{status} = $1;
        @r{qw(head body)} = split /\r\n\r\n/, $out, 2;
        $r{body} //= '';
    }

    return \%r;
}

sub decode { my $j = eval { $JSON->decode($_[0]) }; return $j }

# runs check_key_doc.py (Debian's signedjson) on a key document body
sub check_key_doc {
    my ($name, $body) = @_;

    my ($out, $err) = ('', '');
    run ['/usr/bin/python3', $CHECK_KEY_DOC, $name], \$body, \$out, \$err,
        timeout(60);

    return "$out$err";
}

# "verified NAME KEY" / "NOT verified NAME KEY" per key, by signedjson
my $VERIFY = <<'PY';
import json, sys
import signedjson.key, signedjson.sign
d = json.load(sys.stdin)
for kid, b64 in sorted(d["keys"].items()):
    alg, version = kid.split(":", 1)
    vk = signedjson.key.decode_verify_key_base64(alg, version, b64)
    try:
        signedjson.sign.verify_signed_json(d["doc"], d["name"], vk)
        print("verified %s %s" % (d["name"], kid))
    except signedjson.sign.SignatureVerifyException:
        print("NOT verified %s %s" % (d["name"], kid))
PY

sub verify {
    my ($doc, $name, $kid, $b64) = @_;

    my ($rc, $out, $err) = python($VERIFY, $JSON->encode(
        { doc => $doc, name => $name, keys => { $kid => $b64 } }));
    chomp $out;

    return $rc ? "python failed: $err" : $out;
}

# an X-Matrix header signed by a key only this test holds
my ($TEST_SEED, $TEST_KID, $TEST_PUB) = do {
    my ($rc, $out, $err) = python(<<'PY', '');
import signedjson.key as k
key = k.generate_signing_key("selftest")
print(k.encode_signing_key_base64(key), "ed25519:selftest",
      k.encode_verify_key_base64(k.get_verify_key(key)))
PY
    die "python: $err" if $rc;
    split ' ', $out;
};

my $SIGN_REQUEST = <<'PY';
import json, sys
import signedjson.key, signedjson.sign
d = json.load(sys.stdin)
key = signedjson.key.decode_signing_key_base64("ed25519", "selftest", d["seed"])
obj = {k: d[k] for k in ("method", "uri", "origin", "destination")}
if "content" in d:
    obj["content"] = d["content"]
signedjson.sign.sign_json(obj, d["origin"], key)
sig = obj["signatures"][d["origin"]]["ed25519:selftest"]
print('X-Matrix origin="%s",destination="%s",key="ed25519:selftest",sig="%s"'
      % (d["origin"], d["destination"], sig))
PY

sub sign_request {
    my (%r) = @_;

    my ($rc, $out, $err) = python($SIGN_REQUEST,
                                  $JSON->encode({ %r, seed => $TEST_SEED }));
    die "python: $err" if $rc;
    chomp $out;

    return $out;
}


# ---------------------------------------------------------------- TLS

subtest 'make_test_ca.sh: a CA, and certificates openssl checks' => sub {
    my $dir = tempdir('mxca-XXXXXX', TMPDIR => 1, CLEANUP => 1) . '/ca';
    my $out = `$TOOLS/make_test_ca.sh $dir a.test,b.test,127.0.0.1,::1 2>&1`;
    is($?, 0, 'exits 0') or diag($out);
    is($out, "$dir/a.test.crt\n", 'prints the certificate made');
    ok(-f "$dir/ca.crt" && -f "$dir/a.test.key", 'CA and key files');
    is((stat "$dir/a.test.key")[2] & 0777, 0600, 'the key is 0600');

    my $san = `openssl x509 -in $dir/a.test.crt -noout -ext subjectAltName`;
    like($san, qr/DNS:a\.test, DNS:b\.test, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1/,
         'every name a subjectAltName, addresses as IP');

    my $v = `openssl verify -CAfile $dir/ca.crt $dir/a.test.crt 2>&1`;
    like($v, qr/a\.test\.crt: OK/, 'signed by the CA');

    `$TOOLS/make_test_ca.sh --expired $dir --out old a.test 2>&1`;
    $v = `openssl verify -CAfile $dir/ca.crt $dir/old.crt 2>&1`;
    like($v, qr/certificate has expired/, '--expired: expired');

    `$TOOLS/make_test_ca.sh --self-signed $dir --out self a.test 2>&1`;
    $v = `openssl verify -CAfile $dir/ca.crt $dir/self.crt 2>&1`;
    like($v, qr/self-signed certificate/, '--self-signed: not the CA\'s');

    my $ca_before = `cat $dir/ca.crt`;
    `$TOOLS/make_test_ca.sh $dir c.test 2>&1`;
    is(`cat $dir/ca.crt`, $ca_before, 'a second call keeps the CA');

    `$TOOLS/make_test_ca.sh $dir 'a;b' 2>&1`;
    is($? >> 8, 2, 'a name with odd characters is refused');
};

subtest 'the fake over TLS: CA, SNI, a certificate per host' => sub {
    for my $name (qw(remote.test notary.test target.test)) {
        my $r = fetch($name, '/_matrix/key/v2/server', args => ['-v']);
        is($r->{status}, 200, "$name: 200 through curl --cacert")
            or diag($r->{err});
        like($r->{err}, qr/subject: CN=\Q$name\E/, "$name: its own certificate");
    }

    my $r = fetch('remote.test', '/_matrix/key/v2/server', cacert => 0);
    isnt($r->{exit}, 0, 'without --cacert curl refuses the certificate');
    like($r->{err}, qr/unable to get local issuer certificate/,
         '... its issuer is unknown');

    $r = fetch('stranger.test', '/_matrix/key/v2/server');
    isnt($r->{exit}, 0, 'a name the fake has no certificate for fails');
    like($r->{err}, qr/no alternative certificate subject name matches target host name 'stranger\.test'/,
         '... on the name');

    # no SNI (an address): the default certificate, for 127.0.0.1
    my ($out, $err) = ('', '');
    run ['curl', '-sS', '--max-time', 10, '--cacert', $fake->ca_file,
         '-H', 'Host: remote.test', "https://127.0.0.1:$PORT/_matrix/key/v2/server"],
        '<', \'', '>', \$out, '2>', \$err, timeout(30);
    is(decode($out)->{server_name} // '', 'remote.test',
       'an address (no SNI) gets the default certificate, Host picks the server')
        or diag($err);
};

subtest 'certificates on demand: expired, untrusted, wrong name, self-signed' => sub {
    my %want = (expired => qr/certificate has expired/,
                untrusted => qr/unable to get local issuer certificate/,
                wrong_name => qr/no alternative certificate subject name matches target host name 'remote\.test'/,
                self_signed => qr/self-signed certificate/,
                not_yet => qr/certificate is not yet valid/);

    for my $kind (sort keys %want) {
        $fake->tls('remote.test', $kind);
        my $r = fetch('remote.test', '/_matrix/key/v2/server');
        isnt($r->{exit}, 0, "$kind: curl refuses it");
        like($r->{err}, $want{$kind}, "$kind: for the right reason")
            or diag($r->{err});

        $r = fetch('remote.test', '/_matrix/key/v2/server', args => ['-k']);
        is($r->{status}, 200, "$kind: it is served (curl -k)");
    }

    $fake->tls('remote.test', 'valid');
    is(fetch('remote.test', '/_matrix/key/v2/server')->{status}, 200,
       'valid: back to its own certificate');
};


# ---------------------------------------------------------------- keys

my ($REMOTE_KID, $REMOTE_PUB) = $fake->public_key('remote.test');
my ($NOTARY_KID, $NOTARY_PUB) = $fake->public_key('notary.test');

subtest 'key documents, checked by signedjson' => sub {
    like($REMOTE_KID, qr/^ed25519:\w+$/, 'public_key: a key ID');
    like($REMOTE_PUB, qr/^[A-Za-z0-9+\/]{43}$/, 'public_key: unpadded base64');
    isnt($REMOTE_PUB, $NOTARY_PUB, 'each server has its own key');

    my $r = fetch('remote.test', '/_matrix/key/v2/server');
    is(check_key_doc('remote.test', $r->{body}), <<"EOF", 'normal: good');
canonical
server_name remote.test
verified $REMOTE_KID
valid for more than an hour
EOF
    is(decode($r->{body})->{verify_keys}{$REMOTE_KID}{key}, $REMOTE_PUB,
       'the document publishes public_key');

    # through the delegated host name: the same server
    $r = fetch('target.test', '/_matrix/key/v2/server');
    like(check_key_doc('remote.test', $r->{body}), qr/^verified \Q$REMOTE_KID\E$/m,
         'an alias serves its server\'s document');

    $fake->configure('remote.test', { key_mode => 'forged' });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    like(check_key_doc('remote.test', $r->{body}),
         qr/^NOT verified \Q$REMOTE_KID\E/m, 'forged: the signature fails');
    is(decode($r->{body})->{verify_keys}{$REMOTE_KID}{key}, $REMOTE_PUB,
       'forged: ... under the real key ID and key');

    $fake->configure('remote.test', { key_mode => 'expired' });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    my $check = check_key_doc('remote.test', $r->{body});
    like($check, qr/^verified /m, 'expired: still signed');
    like($check, qr/^valid for only -\d+ ms$/m, 'expired: valid_until_ts past');

    $fake->configure('remote.test', { key_mode => 'wrong_server_name' });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    like(check_key_doc('remote.test', $r->{body}),
         qr/^WRONG server_name, expected remote\.test$/m,
         'wrong_server_name: another name');

    $fake->configure('remote.test', { key_mode => 'unsigned' });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    ok(!exists decode($r->{body})->{signatures}, 'unsigned: no signatures');
    like(check_key_doc('remote.test', $r->{body}), qr/^NOT verified /m,
         'unsigned: fails verification');

    $fake->configure('remote.test', { key_mode => undef,
                                      valid_for_ms => 1800 * 1000 });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    like(check_key_doc('remote.test', $r->{body}),
         qr/^verified .*^valid for only \d+ ms$/ms, 'valid_for_ms');

    # a key given in Synapse's file format
    my $seed = 'YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1';
    $fake->configure('remote.test', {
        valid_for_ms => undef,
        signing_key => "ed25519 1 $seed\n",
        old_verify_keys => { 'ed25519:old' => { key => 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8',
                                                expired_ts => 1532645052628 } } });
    $r = fetch('remote.test', '/_matrix/key/v2/server');
    is(check_key_doc('remote.test', $r->{body}), <<'EOF', 'a Synapse key file');
canonical
server_name remote.test
verified ed25519:1
old ed25519:old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8 1532645052628
valid for more than an hour
EOF
    is(decode($r->{body})->{verify_keys}{'ed25519:1'}{key},
       $MatrixTest::SPEC_PUBLIC_KEY, '... the spec\'s key');

    $fake->reset(config => 1);
    is(($fake->public_key('remote.test'))[1], $REMOTE_PUB,
       'reset config => 1: the key it started with');
    is_deeply([map { $_->{path} } $fake->requests], [], '... and no records');
};


# ---------------------------------------------------------------- notary

subtest 'the notary countersigns' => sub {
    my $r = fetch('notary.test', '/_matrix/key/v2/query', args => [
        '-X', 'POST', '-H', 'Content-Type: application/json', '--data',
        '{"server_keys":{"remote.test":{},"unknown.test":{}}}']);
    is($r->{status}, 200, 'POST /_matrix/key/v2/query');
    my $docs = decode($r->{body})->{server_keys} || [];
    is(scalar @$docs, 1, 'one document: none for a server it does not know');
    my $doc = $docs->[0] || {};
    is($doc->{server_name}, 'remote.test', 'remote.test\'s');
    is(verify($doc, 'remote.test', $REMOTE_KID, $REMOTE_PUB),
       "verified remote.test $REMOTE_KID", 'signed by remote.test');
    is(verify($doc, 'notary.test', $NOTARY_KID, $NOTARY_PUB),
       "verified notary.test $NOTARY_KID", 'countersigned by notary.test');
    is(verify($doc, 'notary.test', $NOTARY_KID, $REMOTE_PUB),
       "NOT verified notary.test $NOTARY_KID", '(the check can fail)');

    $r = fetch('notary.test', '/_matrix/key/v2/query/remote.test');
    $doc = (decode($r->{body})->{server_keys} || [])->[0] || {};
    is(verify($doc, 'notary.test', $NOTARY_KID, $NOTARY_PUB),
       "verified notary.test $NOTARY_KID", 'GET .../query/remote.test too');
    $r = fetch('notary.test', "/_matrix/key/v2/query/remote.test/$REMOTE_KID");
    is(scalar @{ decode($r->{body})->{server_keys} || [] }, 1,
       'GET .../query/remote.test/KEY_ID too');

    $fake->configure('notary.test', { notary_mode => 'no_notary_signature' });
    $r = fetch('notary.test', '/_matrix/key/v2/query/remote.test');
    $doc = (decode($r->{body})->{server_keys} || [])->[0] || {};
    ok(!exists $doc->{signatures}{'notary.test'},
       'no_notary_signature: the countersignature is missing');
    is(verify($doc, 'remote.test', $REMOTE_KID, $REMOTE_PUB),
       "verified remote.test $REMOTE_KID", '... the origin\'s is there');

    $fake->configure('notary.test', { notary_mode => 'bad_notary_signature' });
    $r = fetch('notary.test', '/_matrix/key/v2/query/remote.test');
    $doc = (decode($r->{body})->{server_keys} || [])->[0] || {};
    ok(exists $doc->{signatures}{'notary.test'}{$NOTARY_KID},
       'bad_notary_signature: a countersignature under the notary\'s key ID');
    is(verify($doc, 'notary.test', $NOTARY_KID, $NOTARY_PUB),
       "NOT verified notary.test $NOTARY_KID", '... that does not verify');

    # relays what it is given, and what the origin's mode makes
    my $given = { server_name => 'elsewhere.test', valid_until_ts => 1,
                  verify_keys => {} };
    $fake->configure('notary.test', { notary_mode => undef,
        notary_documents => { 'elsewhere.test' => $given } });
    $fake->configure('remote.test', { key_mode => 'expired' });
    $r = fetch('notary.test', '/_matrix/key/v2/query', args => [
        '-X', 'POST', '--data',
        '{"server_keys":{"elsewhere.test":{},"remote.test":{}}}']);
    my @got = @{ decode($r->{body})->{server_keys} || [] };
    is_deeply([map { $_->{server_name} } @got],
              ['elsewhere.test', 'remote.test'], 'configured documents');
    is(verify($got[0], 'notary.test', $NOTARY_KID, $NOTARY_PUB),
       "verified notary.test $NOTARY_KID", '... countersigned');
    cmp_ok($got[1]{valid_until_ts} // 9e15, '<', time * 1000,
           'the origin\'s expired document, relayed');

    $fake->configure('notary.test', { notary_mode => 'empty' });
    $r = fetch('notary.test', '/_matrix/key/v2/query/remote.test');
    is($r->{body}, '{"server_keys":[]}', 'empty: no documents');

    $fake->reset(config => 1);
};


# ---------------------------------------------------------------- discovery

subtest '.well-known/matrix/server' => sub {
    my $r = fetch('remote.test', '/.well-known/matrix/server');
    is($r->{status}, 404, 'not configured: 404');

    $fake->configure('remote.test',
                     { well_known => { 'm.server' => "target.test:$PORT" } });
    $r = fetch('remote.test', '/.well-known/matrix/server');
    is($r->{status}, 200, 'configured: 200');
    is($r->{body}, qq({"m.server":"target.test:$PORT"}), 'the delegation');
    like($r->{head}, qr{^Content-Type: application/json}mi, 'as JSON');

    $fake->configure('remote.test', { well_known => '{"m.server": ' });
    $r = fetch('remote.test', '/.well-known/matrix/server');
    is($r->{body}, '{"m.server": ', 'a string is served raw');
    ok(!defined decode($r->{body}), '... not JSON');

    $fake->configure('remote.test', { behaviour => {
        well_known => { redirect => 'https://elsewhere.test/.well-known/matrix/server' } } });
    $r = fetch('remote.test', '/.well-known/matrix/server');
    is($r->{status}, 302, 'redirect: 302');
    like($r->{head}, qr{^Location: https://elsewhere\.test/\.well-known/matrix/server\r?$}mi,
         '... to the Location given');

    $fake->reset(config => 1);
};


# ---------------------------------------------------------------- behaviours

subtest 'misbehaviour on demand' => sub {
    my $key = '/_matrix/key/v2/server';

    $fake->configure('remote.test', { behaviour => { key => { status => 500 } } });
    my $r = fetch('remote.test', $key);
    is($r->{status}, 500, 'status 500');
    is(decode($r->{body})->{errcode}, 'M_UNKNOWN', '... a Matrix error body');
    is(fetch('notary.test', $key)->{status}, 200, 'only for that server');
    is(fetch('remote.test', '/.well-known/matrix/server')->{status}, 404,
       'only for that endpoint');

    $fake->configure('remote.test', { behaviour => { key => { delay_ms => 600 } } });
    $r = fetch('remote.test', $key);
    cmp_ok($r->{seconds}, '>=', 0.6, 'delay_ms: answers after the delay');
    is($r->{status}, 200, '... normally');
    $r = fetch('remote.test', $key, max_time => 0.3);
    is($r->{exit}, 28, '... a client with a shorter timeout gives up');

    $fake->configure('remote.test', { behaviour => { key => { oversize => 2_000_000 } } });
    $r = fetch('remote.test', $key);
    cmp_ok(length $r->{body}, '>=', 2_000_000, 'oversize: a big body');
    is(decode($r->{body})->{server_name}, 'remote.test', '... still the document');

    $fake->configure('remote.test', { behaviour => { key => { truncate => 40 } } });
    $r = fetch('remote.test', $key);
    is($r->{exit}, 0, 'truncate: a complete HTTP answer');
    is(length $r->{body}, 40, '... of 40 bytes');
    ok(!defined decode($r->{body}), '... that is not JSON');

    $fake->configure('remote.test', { behaviour => { key => { malformed => 1 } } });
    $r = fetch('remote.test', $key);
    ok(!defined decode($r->{body}) && $r->{status} == 200,
       'malformed: 200 and not JSON');

    $fake->configure('remote.test', { behaviour => { key => { chunked => 1,
                                                              chunk_size => 50 } } });
    $r = fetch('remote.test', $key, args => ['--raw']);
    like($r->{head}, qr/^Transfer-Encoding: chunked/mi, 'chunked: the header');
    like($r->{body}, qr/\A32\r\n.{50}\r\n32\r\n/s, '... chunks of 50 bytes');
    unlike($r->{head}, qr/^Content-Length/mi, '... no Content-Length');
    $r = fetch('remote.test', $key);
    like(check_key_doc('remote.test', $r->{body}), qr/^verified /m,
         '... of a good document');

    $fake->configure('remote.test', { behaviour => { key => { close_after => 10 } } });
    $r = fetch('remote.test', $key);
    is($r->{exit}, 18, 'close_after: closed before the announced length');

    $fake->configure('remote.test', { behaviour => { key => { drop => 1 } } });
    $r = fetch('remote.test', $key);
    is($r->{exit}, 52, 'drop: no answer at all');

    # keep-alive: two requests on one connection, or not
    my $two = sub {
        my ($out, $err) = ('', '');
        run ['curl', '-sS', '-v', '--max-time', 10, '--cacert', $fake->ca_file,
             '--resolve', "remote.test:$PORT:127.0.0.1",
             "https://remote.test:$PORT$key", "https://remote.test:$PORT$key"],
            '<', \'', '>', \$out, '2>', \$err, timeout(30);
        return $err;
    };
    my $conns = sub {
        my @r = $fake->requests(endpoint => 'key');
        return join ' ', map { $_->{connection} - $r[0]{connection} } @r;
    };
    $fake->configure('remote.test', { behaviour => undef });
    $fake->reset;
    my $err = $two->();
    like($err, qr/Re-using existing connection/i, 'keep-alive by default');
    is($conns->(), '0 0', '... recorded: one connection');
    $fake->configure('remote.test', { behaviour => { key => { keep_alive => 0 } } });
    $fake->reset;
    $err = $two->();
    unlike($err, qr/Re-using existing connection/i, 'keep_alive 0: not reused');
    like($err, qr/^< Connection: close/mi, '... Connection: close');
    is($conns->(), '0 1', '... recorded: two connections');

    # selectors: '*', an endpoint, a path prefix with or without a method
    $fake->configure('remote.test', { x_matrix_required => 0, behaviour => {
        '*' => { headers => { 'X-Fake' => 'all' } },
        '/_matrix/federation/v1/query/' => { status => 403 },
        'PUT /_matrix/federation/v1/send/' => { status => 202, json => { ok => 1 } } } });
    $r = fetch('remote.test', '/_matrix/federation/v1/send/1', args => ['-X', 'PUT']);
    is("$r->{status} $r->{body}", '202 {"ok":1}', 'METHOD /prefix: its answer');
    like($r->{head}, qr/^X-Fake: all/mi, '... with the * headers');
    $r = fetch('remote.test', '/_matrix/federation/v1/send/1');
    is("$r->{status} $r->{body}", '200 {}', 'another method: the catch-all');
    is(fetch('remote.test', '/_matrix/federation/v1/query/profile?x=1')->{status},
       403, '/prefix: its status');

    my $e = eval { $fake->configure('remote.test',
                       { behaviour => { key => { stauts => 500 } } }); 1 }
        ? '' : $@;
    like($e, qr/unknown 'stauts'/, 'an unknown behaviour field is refused');
    $e = eval { $fake->configure('remote.test', { kye_mode => 'forged' }); 1 }
        ? '' : $@;
    like($e, qr/unknown field 'kye_mode'/, 'an unknown field is refused');
    $e = eval { $fake->configure('remote.test', { key_mode => 'nonsense' }); 1 }
        ? '' : $@;
    like($e, qr/key_mode must be one of/, 'a bad value is refused');
    is(fetch('remote.test', '/_matrix/federation/v1/query/x')->{status}, 403,
       '... and leaves the configuration as it was');

    $fake->reset(config => 1);
};


# ---------------------------------------------------------------- X-Matrix

subtest 'X-Matrix: verified against given, hosted and fetched keys' => sub {
    $fake->configure_global({ keys => { 'origin.test' => { $TEST_KID => $TEST_PUB } } });

    my $path = '/_matrix/federation/v1/send/txn1?x=1';
    my $content = { pdus => [], edus => [] };
    my $auth = sign_request(method => 'PUT', uri => $path, content => $content,
                            origin => 'origin.test', destination => 'remote.test');
    my $body = $JSON->encode($content);

    my $r = fetch('remote.test', $path, args => [
        '-X', 'PUT', '-H', "Authorization: $auth",
        '-H', 'Content-Type: application/json', '--data', $body]);
    is("$r->{status} $r->{body}", '200 {}', 'a signed request: 200 {}');

    my ($rec) = $fake->requests(method => 'PUT');
    is($rec->{origin}, 'origin.test', 'recorded: origin');
    ok($rec->{verified}, 'recorded: verified')
        or diag(explain $rec->{x_matrix});
    is($rec->{x_matrix}[0]{key_source}, 'config', '... with the given key');
    is_deeply($rec->{json}, $content, 'recorded: the body');
    is($rec->{path}, $path, 'recorded: the path as sent');
    is($rec->{server}, 'remote.test', 'recorded: the server');
    is($rec->{endpoint}, 'federation', 'recorded: the endpoint');
    is($rec->{sni}, 'remote.test', 'recorded: SNI');
    ok($rec->{tls}, 'recorded: over TLS');
    is($rec->{status}, 200, 'recorded: the status');
    ok((grep { lc $_->[0] eq 'authorization' && $_->[1] eq $auth }
        @{ $rec->{headers} }), 'recorded: the headers');

    $fake->reset;
    $r = fetch('remote.test', $path, args => [
        '-X', 'PUT', '-H', "Authorization: $auth", '--data', '{"pdus":[1]}']);
    is($r->{status}, 401, 'another body: 401');
    like(decode($r->{body})->{error} // '', qr/signature/, '... the signature');
    ($rec) = $fake->requests;
    ok(!$rec->{verified}, '... recorded as not verified');

    $r = fetch('notary.test', $path, args => [
        '-X', 'PUT', '-H', "Authorization: $auth", '--data', $body]);
    is($r->{status}, 401, 'another destination: 401');
    like(decode($r->{body})->{error} // '', qr/destination/, '... the destination');

    $r = fetch('remote.test', $path, args => ['-X', 'PUT', '--data', $body]);
    is($r->{status}, 401, 'no header: 401');

    (my $unknown = $auth) =~ s/origin="origin\.test"/origin="nobody.test"/;
    $r = fetch('remote.test', $path, args => [
        '-X', 'PUT', '-H', "Authorization: $unknown", '--data', $body]);
    like(decode($r->{body})->{error} // '', qr/no key/, 'an unknown origin: no key');

    # one of the fake's servers signs, another checks (the hosted key)
    my $get = '/_matrix/federation/v1/query/directory?room_alias=%23a%3Ab';
    $auth = $fake->x_matrix('notary.test', method => 'GET', uri => $get,
                            destination => 'remote.test');
    like($auth, qr/^X-Matrix origin="notary\.test",destination="remote\.test",key="\Q$NOTARY_KID\E",sig="[A-Za-z0-9+\/]{86}"$/,
         'x_matrix: the header');
    $r = fetch('remote.test', $get, args => ['-H', "Authorization: $auth"]);
    is($r->{status}, 200, '... verified by the fake');

    # the same header checked by signedjson here, not by the fake
    my ($sig) = $auth =~ /sig="([^"]+)"/;
    is(verify({ method => 'GET', uri => $get, origin => 'notary.test',
                destination => 'remote.test',
                signatures => { 'notary.test' => { $NOTARY_KID => $sig } } },
              'notary.test', $NOTARY_KID, $NOTARY_PUB),
       "verified notary.test $NOTARY_KID", '... and by signedjson');

    $auth = $fake->x_matrix('notary.test', method => 'GET', uri => $get,
                            destination => 'remote.test', forged => 1);
    is(fetch('remote.test', $get, args => ['-H', "Authorization: $auth"])->{status},
       401, 'x_matrix forged => 1: refused');

    my $signed = $fake->sign_json('remote.test', { a => 1 });
    is(verify($signed, 'remote.test', $REMOTE_KID, $REMOTE_PUB),
       "verified remote.test $REMOTE_KID", 'sign_json');

    # keys fetched from another server over TLS (a second fake, same CA)
    my $other = MatrixFakeHS->start(names => ['other.test'],
                                    tls_dir => $fake->tls_dir);
    my ($other_kid) = $other->public_key('other.test');
    $fake->configure_global({
        keys => { 'other.test' => 'https://other.test:' . $other->port },
        fetch_cafile => $fake->ca_file,
        resolve => { 'other.test' => '127.0.0.1' } });

    $auth = $other->x_matrix('other.test', method => 'GET', uri => $get,
                             destination => 'remote.test');
    $fake->reset;
    $r = fetch('remote.test', $get, args => ['-H', "Authorization: $auth"]);
    is($r->{status}, 200, 'keys fetched from another server: verified')
        or diag($r->{body});
    ($rec) = $fake->requests;
    is($rec->{x_matrix}[0]{key_source}, 'fetched', '... fetched');
    is($rec->{x_matrix}[0]{key}, $other_kid, '... its key');
    my @fetches = $other->requests(endpoint => 'key');
    is(scalar @fetches, 1, '... by GET /_matrix/key/v2/server');
    is($fetches[0]{sni}, 'other.test', '... over TLS, to its name');
    fetch('remote.test', $get, args => ['-H', "Authorization: $auth"]);
    @fetches = $other->requests(endpoint => 'key');
    is(scalar @fetches, 1, '... once (cached)');

    $other->configure('other.test', { key_mode => 'forged' });
    $fake->reset;    # forgets fetched keys
    $r = fetch('remote.test', $get, args => ['-H', "Authorization: $auth"]);
    is($r->{status}, 401, 'a forged key document: not trusted');
    like(decode($r->{body})->{error} // '', qr/fetching the keys/, '... says why');
    $other->stop;

    $fake->reset(config => 1);
};


subtest 'X-Matrix signed by matrix-tool, verified by the fake' => sub {
    plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};
    plan skip_all => 'matrix-tool has no x-matrix command'
        unless system("$ENV{MATRIX_TOOL} help x-matrix >/dev/null 2>&1") == 0;

    # the module's key: the spec's, "ed25519:1"
    $fake->configure_global({ keys => { 'module.test' =>
        { 'ed25519:1' => $MatrixTest::SPEC_PUBLIC_KEY } } });

    my $tool_sign = sub {
        my ($method, $uri, $body) = @_;
        my ($rc, $out, $err) = MatrixTest::tool(['x-matrix',
            '--key', $ENV{TEST_NGINX_MATRIX_KEY}, '--origin', 'module.test',
            '--destination', 'remote.test', '--method', $method,
            '--uri', $uri], $body);
        die "matrix-tool x-matrix: $err" if $rc;
        chomp $out;
        return $out;
    };

    my $uri = '/_matrix/federation/v1/send/t1';
    my $body = '{"edus":[],"pdus":[]}';
    my $auth = $tool_sign->('PUT', $uri, $body);
    $fake->reset;
    my $r = fetch('remote.test', $uri, args => [
        '-X', 'PUT', '-H', "Authorization: $auth", '--data', $body]);
    is("$r->{status} $r->{body}", '200 {}', 'PUT with a body: verified');
    my ($rec) = $fake->requests;
    ok($rec->{verified} && $rec->{origin} eq 'module.test',
       '... recorded as from module.test') or diag(explain $rec->{x_matrix});

    $r = fetch('remote.test', $uri, args => [
        '-X', 'PUT', '-H', "Authorization: $auth", '--data', '{"pdus":[]}']);
    is($r->{status}, 401, 'another body: refused');

    my $get = '/_matrix/federation/v1/query/profile?user_id=%40a%3Aremote.test';
    $auth = $tool_sign->('GET', $get, '');
    $r = fetch('remote.test', $get, args => ['-H', "Authorization: $auth"]);
    is($r->{status}, 200, 'GET without a body, with a query: verified');
    $r = fetch('remote.test', "$get&x=1", args => ['-H', "Authorization: $auth"]);
    is($r->{status}, 401, 'another query string: refused');

    $fake->reset(config => 1);
};


# ---------------------------------------------------------------- control

subtest 'the control API' => sub {
    $fake->reset;
    fetch('remote.test', '/_matrix/key/v2/server');
    fetch('notary.test', '/_matrix/key/v2/server');
    fetch('remote.test', '/.well-known/matrix/server');

    my @all = $fake->requests;
    is_deeply([map { "$_->{server} $_->{endpoint} $_->{status}" } @all],
              ['remote.test key 200', 'notary.test key 200',
               'remote.test well_known 404'], 'every request, in order');
    is_deeply([map { $_->{server} } $fake->requests(endpoint => 'key')],
              ['remote.test', 'notary.test'], 'filter by endpoint');
    is_deeply([map { $_->{path} } $fake->requests(server => 'remote.test',
                                                  path => '/.well-known/')],
              ['/.well-known/matrix/server'], 'filter by server and path');

    $fake->reset;
    is_deeply(scalar $fake->requests, [], 'reset clears them');

    # a new server name is a new server (and can be an address, for SNI-less)
    $fake->configure("127.0.0.1:$PORT", {});
    my ($out, $err) = ('', '');
    run ['curl', '-sS', '--cacert', $fake->ca_file,
         "https://127.0.0.1:$PORT/_matrix/key/v2/server"],
        '<', \'', '>', \$out, '2>', \$err, timeout(30);
    is(decode($out)->{server_name} // $err, "127.0.0.1:$PORT",
       'an address and port as server name');

    my $cfg = $fake->config;
    ok($cfg->{servers}{'remote.test'}{keys}{$REMOTE_KID}, 'GET /_fake/config');

    my $res = HTTP::Tiny->new->post($fake->control_url . '/_fake/config',
                                    { content => '{"servers": 1}' });
    is($res->{status}, 400, 'a bad configuration: 400');

    is(fetch('unknown.test', '/_matrix/key/v2/server', args => ['-k'])->{status},
       404, 'a Host the fake does not play: 404');
    $fake->reset(config => 1);
};

subtest 'more than one port, plain HTTP, stop' => sub {
    my $f = MatrixFakeHS->start(names => ['a.test'], https => 2, http => 1);
    my @ports = $f->ports;
    is(scalar @ports, 2, 'two TLS ports');
    isnt($ports[0], $ports[1], '... different');
    for my $p (@ports) {
        is(fetch('a.test', '/_matrix/key/v2/server', port => $p,
                 cacert => $f->ca_file)->{status}, 200, "TLS on $p");
    }

    my ($out, $err) = ('', '');
    run ['curl', '-sS', '-H', 'Host: a.test', 'http://127.0.0.1:'
         . $f->http_port . '/_matrix/key/v2/server'],
        '<', \'', '>', \$out, '2>', \$err, timeout(30);
    is(decode($out)->{server_name} // $err, 'a.test', 'plain HTTP');
    my ($rec) = grep { !$_->{tls} } $f->requests;
    ok($rec && !defined $rec->{sni}, '... recorded as such');

    my $pid = $f->pid;
    $f->stop;
    ok(!kill(0, $pid), 'stop ends the process');
    my $r = fetch('a.test', '/', port => $ports[0], cacert => $f->ca_file);
    is($r->{exit}, 7, '... and its port is closed');
};


# ---------------------------------------------------------------- DNS

SKIP: {
    skip 'apt-get install python3-dnslib bind9-dnsutils (dig)', 1
        unless MatrixDNS->available && -x '/usr/bin/dig';

subtest 'MatrixDNS through dig, over UDP and TCP' => sub {
    my $t = time;
    my $dns = MatrixDNS->start(records => {
        'remote.test' => { A => '127.0.0.1' },
        'v6.test' => { AAAA => '::1', A => ['127.0.0.2', '127.0.0.3'] },
        '_matrix-fed._tcp.srv.test' => { SRV => [[10, 5, 8448, 'target.test'],
                                                 [20, 0, 8449, 'Backup.test.']] },
        'alias.test' => { CNAME => 'remote.test' },
        'dangling.test' => { CNAME => 'nowhere.test' },
        '*.wild.test' => { A => '127.0.0.4', ttl => 5 },
        'broken.test' => { rcode => 'SERVFAIL' },
        'refused.test' => { rcode => 'REFUSED' },
        'tcp.test' => { A => '127.0.0.5', truncate => 1 },
        'many.test' => { A => [map { "127.0.1.$_" } 1 .. 40] },
        'slow.test' => { A => '127.0.0.6', delay_ms => 700 },
        'silent.test' => { drop => 1 },
    });
    my $start_time = time - $t;
    cmp_ok($start_time, '<', 1, 'starts in under a second')
        or diag(sprintf '%.3f s', $start_time);
    like($dns->resolver, qr/^127\.0\.0\.1:\d+$/, 'resolver: 127.0.0.1:PORT');

    my $port = $dns->port;
    my $dig = sub {
        my (@args) = @_;
        my ($out, $err) = ('', '');
        my $t = time;
        run ['dig', '-p', $port, '@127.0.0.1', '+time=2', '+tries=1',
             @args], '<', \'', '>', \$out, '2>', \$err, timeout(30);
        return wantarray ? ($out . $err, time - $t) : $out . $err;
    };
    my $short = sub { join ' ', sort split /\n/, $dig->('+short', @_) };
    my $status = sub { $dig->(@_) =~ /status: (\w+)/ ? $1 : 'none' };

    is($short->('remote.test', 'A'), '127.0.0.1', 'A');
    is($short->('REMOTE.test.', 'A'), '127.0.0.1', 'names are case-blind');
    is($short->('v6.test', 'AAAA'), '::1', 'AAAA');
    is($short->('v6.test', 'A'), '127.0.0.2 127.0.0.3', 'several A');
    is($short->('_matrix-fed._tcp.srv.test', 'SRV'),
       '10 5 8448 target.test. 20 0 8449 backup.test.', 'SRV');
    like($dig->('_matrix-fed._tcp.srv.test', 'SRV'),
         qr/_matrix-fed\._tcp\.srv\.test\.\s+60\s+IN\s+SRV\s+10 5 8448 target\.test\./,
         'SRV: the default TTL, 60');
    is($short->('alias.test', 'A'), '127.0.0.1 remote.test.', 'CNAME, followed');
    is($status->('dangling.test', 'A'), 'NXDOMAIN', 'a CNAME to nowhere');
    is($short->('x.wild.test', 'A'), '127.0.0.4', 'a wildcard');
    like($dig->('x.wild.test', 'A'), qr/x\.wild\.test\.\s+5\s+IN\s+A/, '... TTL 5');

    is($status->('remote.test', 'A'), 'NOERROR', 'NOERROR');
    like($dig->('remote.test', 'A'), qr/flags: qr aa/, 'authoritative');
    is($status->('unknown.test', 'A'), 'NXDOMAIN', 'an unknown name: NXDOMAIN');
    is($status->('remote.test', 'AAAA'), 'NOERROR', 'no such type: NOERROR');
    is($short->('remote.test', 'AAAA'), '', '... and no answer (NODATA)');
    is($status->('broken.test', 'A'), 'SERVFAIL', 'rcode SERVFAIL');
    is($status->('refused.test', 'A'), 'REFUSED', 'rcode REFUSED');

    like($dig->('+ignore', 'tcp.test', 'A'), qr/flags: qr aa tc/,
         'truncate: TC over UDP');
    is($short->('tcp.test', 'A'), '127.0.0.5', '... dig retries over TCP');
    is($short->('+tcp', 'remote.test', 'A'), '127.0.0.1', 'TCP');
    like($dig->('+ignore', 'many.test', 'A'), qr/flags: qr aa tc/,
         'over 512 bytes: TC over UDP');
    is(scalar(split ' ', $short->('many.test', 'A')), 40, '... all over TCP');

    my ($out, $took) = $dig->('slow.test', 'A');
    cmp_ok($took, '>=', 0.7, 'delay_ms: answers late');
    like($out, qr/127\.0\.0\.6/, '... but answers');
    ($out, $took) = $dig->('+time=1', 'silent.test', 'A');
    unlike($out, qr/status:/, 'drop: no answer');

    my @q = $dns->queries(name => 'tcp.test');
    is_deeply([map { "$_->{proto} $_->{truncated}" } @q],
              ['udp 1', 'udp 1', 'tcp 0'], 'the query log: protocol, TC');
    is($dns->query_count('remote.test', 'A'), 5, 'query_count by name and type');
    is($dns->query_count('remote.test'), 7, 'query_count by name');
    is_deeply([map { $_->{rcode} } $dns->queries(name => 'silent.test')],
              ['dropped'], 'dropped queries are logged');

    # records change while it runs, from the next query on
    $dns->add_records({ 'remote.test' => { A => '127.0.0.9' },
                        'new.test' => { SRV => [1, 1, 443, 'x.test'] },
                        'alias.test' => undef });
    is($short->('remote.test', 'A'), '127.0.0.9', 'add_records: changed');
    is($short->('new.test', 'SRV'), '1 1 443 x.test.', 'add_records: added');
    is($status->('alias.test', 'A'), 'NXDOMAIN', 'add_records: removed');
    is($short->('v6.test', 'AAAA'), '::1', 'add_records: others kept');
    $dns->set_records({ 'only.test' => { A => '10.0.0.1' } });
    is($status->('remote.test', 'A'), 'NXDOMAIN', 'set_records: replaced all');
    is($short->('only.test', 'A'), '10.0.0.1', 'set_records: the new table');

    $dns->reset_queries;
    is(scalar $dns->queries, 0, 'reset_queries');

    ok(!eval { $dns->set_records({ 'x.test' => { MX => 'y' } }); 1 },
       'an unknown record type is refused');

    my $pid = $dns->pid;
    $dns->stop;
    ok(!kill(0, $pid), 'stop ends the server');
};

# the consumer the fixtures are for: nginx's own resolver (UDP, TCP on
# truncation) and TLS client, without the module
subtest 'stock nginx resolves through MatrixDNS and reaches the fake' => sub {
    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    plan skip_all => "no nginx at $bin" unless -x $bin;

    my $dns = MatrixDNS->start(records => {
        'remote.test' => { A => '127.0.0.1' },
        'tcp.test' => { A => '127.0.0.1', truncate => 1 },
    });
    my $resolver = $dns->resolver;
    my $ca = $fake->ca_file;
    my $proxy = sub {
        my ($name) = @_;
        return <<"CONF";
        location /$name {
            set \$h $name;
            proxy_pass https://\$h:$PORT/_matrix/key/v2/server;
            proxy_set_header Host remote.test;
            proxy_ssl_server_name on;
            proxy_ssl_name remote.test;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $ca;
        }
CONF
    };

    require MatrixNginx;
    local $ENV{TEST_NGINX_LOAD_MODULES} = '';
    my $ngx = MatrixNginx->start(
        http => "resolver $resolver ipv6=off; resolver_timeout 3s;",
        server => join('', map { $proxy->($_) }
                       qw(remote.test tcp.test unknown.test)));

    $fake->reset;
    my ($status, undef, $body) = $ngx->get('/remote.test');
    is($status, 200, 'nginx: proxied over TLS to the name resolved')
        or diag($ngx->error_log);
    like(check_key_doc('remote.test', $body), qr/^verified /m,
         '... the fake\'s key document');
    is_deeply([map { "$_->{type} $_->{proto} $_->{rcode}" }
               $dns->queries(name => 'remote.test')],
              ['A udp NOERROR'], '... after one A query over UDP');
    my ($rec) = $fake->requests;
    is($rec->{sni} // '', 'remote.test', '... with SNI');

    ($status) = $ngx->get('/tcp.test');
    is($status, 200, 'a truncated answer: nginx retries over TCP')
        or diag($ngx->error_log);
    is_deeply([map { $_->{proto} } $dns->queries(name => 'tcp.test')],
              ['udp', 'tcp'], '... UDP, then TCP');

    ($status) = $ngx->get('/unknown.test');
    is($status, 502, 'NXDOMAIN: 502');
    like($ngx->error_log,
         qr/unknown\.test could not be resolved \(3: Host not found\)/,
         '... "Host not found" in the log');
    $ngx->stop;
};

}

done_testing;
