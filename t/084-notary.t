# The notary: other servers' key documents as they signed them, fetched
# through discovery and TLS from a fake homeserver, countersigned by this
# server; signatures checked by Debian's python3-signedjson.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);

use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest qw(python);

plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();

my @names = qw(remote.test expired.test);
my $fake = MatrixFakeHS->start(names => \@names);
$fake->configure('expired.test', { key_mode => 'expired' });

my %records = map {
    ($_ => { A => '127.0.0.1' },
     "_matrix-fed._tcp.$_" => { SRV => [[10, 5, $fake->port, $_]] })
} @names;
my $dns = MatrixDNS->start(records => \%records);

my $ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
@{[ $fake->nginx_federation($dns) ]}
EOF
    server => '        location /_matrix/ { matrix; }');

my ($rkid, $rkey) = $fake->public_key('remote.test');
my ($ekid, $ekey) = $fake->public_key('expired.test');
my $OUR = "ed25519:1=$MatrixTest::SPEC_PUBLIC_KEY";

# which (server, key) signatures verify on the document of server
my $CHECK = <<'PY';
import json, sys
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json, SignatureVerifyException
from unpaddedbase64 import decode_base64
body = json.load(sys.stdin)
name = sys.argv[1]
docs = [d for d in body["server_keys"] if d.get("server_name") == name]
if len(docs) != 1:
    print("docs: %d" % len(docs)); sys.exit(0)
for arg in sys.argv[2:]:
    server, rest = arg.split("=", 1)
    kid, b64 = rest.split("=", 1)
    vk = decode_verify_key_bytes(kid, decode_base64(b64))
    try:
        verify_signed_json(docs[0], server, vk)
        print("%s ok" % server)
    except SignatureVerifyException as e:
        print("%s bad" % server)
print("valid_until_ts %d" % docs[0]["valid_until_ts"])
PY

sub check {
    my ($body, $name, @sigs) = @_;
    my ($rc, $out, $err) = python($CHECK, $body, $name, @sigs);
    diag $err if $err;
    return $out;
}

my ($status, $head, $body) = $ngx->get('/_matrix/key/v2/query/remote.test');
is $status, 200, 'GET query/remote.test';
my $out = check($body, 'remote.test', "remote.test=$rkid=$rkey",
                "module.test=$OUR");
like $out, qr/^remote\.test ok$/m, 'the document carries remote.test\'s own signature';
like $out, qr/^module\.test ok$/m, 'and this server\'s countersignature';

my $fetches = () = $fake->requests(endpoint => 'key');
$ngx->get('/_matrix/key/v2/query/remote.test');
is scalar(() = $fake->requests(endpoint => 'key')), $fetches,
    'asked again: served from the cache';

sleep 2.5;    # a server is asked again at most every 2 s
my $far = int((time + 10 * 86400) * 1000);
($status, $head, $body) = $ngx->get(
    "/_matrix/key/v2/query/remote.test?minimum_valid_until_ts=$far");
is $status, 200, 'asked for a validity longer than the document has';
cmp_ok scalar(() = $fake->requests(endpoint => 'key')), '>', $fetches,
    'the document is fetched again';
like check($body, 'remote.test', "remote.test=$rkid=$rkey"),
    qr/^remote\.test ok$/m, 'and the best one there is served';

($status, $head, $body) = $ngx->get('/_matrix/key/v2/query/expired.test');
$out = check($body, 'expired.test', "expired.test=$ekid=$ekey");
like $out, qr/^expired\.test ok$/m, 'an expired document is served as signed';
my ($until) = $out =~ /valid_until_ts (\d+)/;
cmp_ok $until, '<', time * 1000, 'with its own valid_until_ts: the asker judges';

($status, $head, $body) = $ngx->get('/_matrix/key/v2/query/module.test');
like check($body, 'module.test', "module.test=$OUR"), qr/^module\.test ok$/m,
    'this server\'s own document';

my $post = encode_json({ server_keys => {
    'remote.test' => { $rkid => { minimum_valid_until_ts => 0 } },
    'module.test' => {},
    'nowhere.test' => {},
    'not a name' => {},
}});
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $ngx->port) or die;
print $s "POST /_matrix/key/v2/query HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . "Content-Length: " . length($post) . "\r\n\r\n$post";
${*$s}{mx_start} = time;
($status, $head, $body) = $ngx->read_response($s);
is $status, 200, 'POST query';
my $doc = eval { decode_json($body) } || {};
is_deeply [sort map { $_->{server_name} } @{ $doc->{server_keys} || [] }],
          ['module.test', 'remote.test'],
          'the servers that could be had, the others left out';

($status, $head, $body) = $ngx->get('/_matrix/key/v2/query/bad%20name');
is $status, 400, 'an invalid server name';

$s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $ngx->port) or die;
print $s "POST /_matrix/key/v2/query HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Length: 5\r\n\r\n{\"a\":";
${*$s}{mx_start} = time;
($status, $head, $body) = $ngx->read_response($s);
is $status, 400, 'a body that is not JSON';
like $body, qr/"errcode":"M_NOT_JSON"/, 'M_NOT_JSON';

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;
