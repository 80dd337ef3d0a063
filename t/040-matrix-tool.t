# matrix-tool (src/tool/matrix-tool.c, built as build/matrix-tool): the
# output, messages and exit status of every subcommand, and a differential
# test against the independent implementation in Debian's
# python3-canonicaljson and python3-signedjson.
#
#   make build/matrix-tool
#   MATRIX_TOOL=$PWD/build/matrix-tool prove -I t/lib -v t/040-matrix-tool.t
#
# The random objects come from a fixed seed; MATRIX_TOOL_SEED=N tries
# another one, and a failing run prints the seed to replay it.

use strict;
use warnings;
use utf8;

use Test::More;
use Encode qw(encode);
use File::Temp qw(tempdir);
use IPC::Run qw(run timeout);
use JSON::PP ();

use MatrixTest qw(write_file tool python visible);

plan skip_all => 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};


# the key of the spec's signing examples
my $SPEC_SEED = 'YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1';
my $SPEC_PUB = 'XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI';
my $SIG_EMPTY = 'K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ';
my $SIG_ONE_TWO = 'KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw';

my $STDIN_MAX = 16 * 1024 * 1024;       # MX_TOOL_STDIN_MAX

my $dir = tempdir('matrix-tool-XXXXXX', TMPDIR => 1, CLEANUP => 1);

$SIG{PIPE} = 'IGNORE';






sub read_file {
    my ($path) = @_;

    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $content = <$fh>;
    close $fh;

    return $content;
}


# "canonical" on $in must print exactly $want
sub canonical_is {
    my ($in, $want, $name, @flags) = @_;
    my ($rc, $out, $err) = tool(['canonical', @flags], encode('UTF-8', $in));

    is(visible($out), visible(encode('UTF-8', $want)), $name)
        or diag("exit $rc, stderr: $err");
}

# "canonical" (with @flags) refuses $in: exit 1, a "matrix-tool: " message
sub canonical_fails {
    my ($in, $err_re, $name, @flags) = @_;
    my ($rc, $out, $err) = tool(['canonical', @flags], $in);

    ok($rc eq '1' && $out eq '' && $err =~ /\Amatrix-tool: / && $err =~ $err_re,
       $name)
        or diag("exit $rc, stdout: " . visible($out) . ", stderr: $err");
}

sub json_decode {
    my ($bytes) = @_;
    my $v = eval { JSON::PP->new->utf8->decode($bytes) };

    return $v;
}


my $spec_key = write_file("$dir/spec.key", "ed25519 1 $SPEC_SEED\n");


# ---------------------------------------------------------------- keygen

{
    my $path = "$dir/new.key";
    my ($rc, $out, $err) = tool(['keygen', $path]);

    is($rc, 0, 'keygen: exits 0') or diag($err);
    ok(-f $path && ((stat $path)[2] & 07777) == 0600,
       'keygen: the key file has mode 0600')
        or diag(sprintf('mode %o', (stat $path)[2] & 07777));

    my $content = read_file($path) // '';
    my ($file_version) = $content
        =~ /\Aed25519 (a_[A-Za-z0-9]{4}) [A-Za-z0-9+\/]{42}[AEIMQUYcgkosw048]\n\z/;
    ok(defined $file_version,
       'keygen: the file is one Synapse line "ed25519 a_XXXX <43 base64>"')
        or diag(visible($content));

    my ($out_version, $out_pub) = $out =~ /\Aed25519:(\S+) ([A-Za-z0-9+\/]{43})\n\z/;
    ok(defined $out_version && defined $file_version
       && $out_version eq $file_version,
       'keygen: prints "ed25519:<version of the file> <public key>"')
        or diag(visible($out));

    my ($prc, $pout) = tool(['pubkey', '--key', $path]);
    is($pout, $out, 'keygen: prints the public key that pubkey derives '
       . 'from the file');

    my ($rc2, $out2, $err2) = tool(['keygen', $path]);
    ok($rc2 ne '0' && $out2 eq '', 'keygen: refuses an existing file')
        or diag("exit $rc2, stdout: $out2");
    is(read_file($path), $content,
       'keygen: the existing file is left unchanged');
    like($err2, qr/\Amatrix-tool: \Q$path\E already exists/,
         'keygen: the refusal names the file');

    my $other = write_file("$dir/other.key", "not a key\n");
    my ($rc3) = tool(['keygen', '--version', 'x', $other]);
    ok($rc3 ne '0' && read_file($other) eq "not a key\n",
       'keygen: leaves any existing file alone, key or not');
}

{
    my $path = "$dir/abc.key";
    my ($rc, $out, $err) = tool(['keygen', '--version', 'abc', $path]);

    ok($rc eq '0' && $out =~ /\Aed25519:abc [A-Za-z0-9+\/]{43}\n\z/
       && (read_file($path) // '') =~ /\Aed25519 abc [A-Za-z0-9+\/]{43}\n\z/,
       'keygen --version abc: key id ed25519:abc, in the output and the file')
        or diag("exit $rc, stdout: $out, stderr: $err");

    my $path2 = "$dir/abc2.key";
    ($rc, $out) = tool(['keygen', '--version=Abc_09', $path2]);
    like($out, qr/\Aed25519:Abc_09 /, 'keygen --version=V: the "=" form works');

    my $first = read_file($path);
    tool(['keygen', '--version', 'abc', "$dir/abc3.key"]);
    isnt(read_file("$dir/abc3.key"), $first,
         'keygen: two keys with the same version have different seeds');
}

for my $bad (['a-b', qr/characters other than/, '"a-b" (a dash)'],
             ['a b', qr/characters other than/, '"a b" (a space)'],
             ['', qr/1 to 64 characters/, 'an empty version'],
             ['v' x 65, qr/1 to 64 characters/, 'a 65-character version'])
{
    my ($version, $err_re, $what) = @$bad;
    my $path = "$dir/bad-version.key";
    my ($rc, $out, $err) = tool(['keygen', '--version', $version, $path]);

    ok($rc eq '1' && $out eq '' && !-e $path
       && $err =~ /\Amatrix-tool: / && $err =~ $err_re,
       "keygen: refuses $what and creates no file")
        or diag("exit $rc, stdout: $out, stderr: $err");
}

{
    my ($rc, $out) = tool(['keygen', '--version', 'v' x 64, "$dir/long.key"]);
    ok($rc eq '0' && $out =~ /\Aed25519:v{64} /,
       'keygen: accepts a 64-character version');

    ($rc, $out, my $err) = tool(['keygen']);
    ok($rc eq '2' && $err =~ /expected exactly one FILE/
       && $err =~ /usage: matrix-tool keygen/,
       'keygen without FILE: exit 2 and its usage');

    ($rc, $out, $err) = tool(['keygen', "$dir/no-such-dir/x.key"]);
    ok($rc eq '1' && $err =~ /\Amatrix-tool: cannot create .*no-such-dir/,
       'keygen: an uncreatable file is exit 1 with the path');
}


# ---------------------------------------------------------------- pubkey

{
    my ($rc, $out, $err) = tool(['pubkey', '--key', $spec_key]);
    is($out, "ed25519:1 $SPEC_PUB\n", 'pubkey: the spec key')
        or diag("exit $rc, stderr: $err");

    my $two = write_file("$dir/two.key", "ed25519 1 $SPEC_SEED\n\n"
        . "ed25519 second_key nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\n");
    ($rc, $out) = tool(['pubkey', '--key', $two]);
    like($out, qr/\Aed25519:1 \Q$SPEC_PUB\E\ned25519:second_key [A-Za-z0-9+\/]{43}\n\z/,
         'pubkey: one line per key in the file');

    ($rc, $out, $err) = tool(['pubkey', '--key', "$dir/missing.key"]);
    ok($rc eq '1' && $out eq ''
       && $err =~ /\Amatrix-tool: cannot open \Q$dir\E\/missing\.key/,
       'pubkey: a missing file is exit 1 with the path');

    my $bad = write_file("$dir/bad.key", "ed25519 1 c2hvcnQ\n");
    ($rc, $out, $err) = tool(['pubkey', '--key', $bad]);
    ok($rc eq '1' && $err =~ /\Amatrix-tool: \Q$bad\E: line 1: seed/
       && $err !~ /c2hvcnQ/,
       'pubkey: a short seed is exit 1, the line named, the seed not shown');
}


# ---------------------------------------------------------------- canonical

canonical_is('{"b":1,"a":2}', '{"a":2,"b":1}', 'canonical: keys sorted');
canonical_is(qq({ "one" : 1,\n\t"two" : "Two" }\n), '{"one":1,"two":"Two"}',
             'canonical: insignificant whitespace removed');
canonical_is('{"本":2,"日":1,"a":{"z":[3,{"y":1,"x":2}],"\u00e9":0}}',
             '{"a":{"z":[3,{"x":2,"y":1}],"é":0},"日":1,"本":2}',
             'canonical: nested keys sorted by code point');
canonical_is('{"a":"\u65E5\u672c\u8A9E","b":"\ud83d\ude00"}',
             '{"a":"日本語","b":"😀"}',
             'canonical: \u escapes written as raw UTF-8, surrogate pairs too');
canonical_is('{"a":"\u001F\u0001\u007f\u2028/\/"}',
             '{"a":"\\u001f\\u0001' . "\x{7f}\x{2028}" . '//"}',
             'canonical: \u001F lowercased, DEL, U+2028 and "/" not escaped');
canonical_is('["\b\f\n\r\t\"\\\\","\u0008\u000c\u000A\u000D\u0009\u0022\u005c"]',
             '["\b\f\n\r\t\"\\\\","\b\f\n\r\t\"\\\\"]',
             'canonical: short escapes for \b \f \n \r \t \" \\\\');
canonical_is('{"a":"x\u0000y"}', '{"a":"x\\u0000y"}',
             'canonical: \u0000 inside a string kept');
canonical_is('{"a":1e10,"b":-0,"c":1.0E2,"d":9007199254740991,'
             . '"e":-9007199254740991}',
             '{"a":10000000000,"b":0,"c":100,"d":9007199254740991,'
             . '"e":-9007199254740991}',
             'canonical: 1e10 -> 10000000000, -0 -> 0, safe-range ends kept');
canonical_is('[true,false,null,[],{},""]', '[true,false,null,[],{},""]',
             'canonical: literals and empty containers');

{
    my ($rc, $out) = tool(['canonical'], '{"a":1}');
    is(visible($out), '{"a":1}', 'canonical: no trailing newline');
}

canonical_is('{"a":9007199254740991}', '{"a":9007199254740991}',
             'canonical --strict: accepts (2^53)-1', '--strict');
canonical_fails('{"a":1.5}', qr/has a fraction or an exponent/,
                'canonical --strict: refuses 1.5', '--strict');
canonical_fails('{"a":1e10}', qr/has a fraction or an exponent/,
                'canonical --strict: refuses 1e10', '--strict');
canonical_fails('{"a":[-0]}', qr/negative zero/,
                'canonical --strict: refuses -0', '--strict');
canonical_fails('{"a":9007199254740992}', qr/outside \[-\(2\^53\)\+1/,
                'canonical --strict: refuses 2^53', '--strict');
canonical_fails('{"a":-9007199254740992}', qr/outside/,
                'canonical --strict: refuses -(2^53)', '--strict');
canonical_fails('{"a":1.5}', qr/not an integer/,
                'canonical: refuses 1.5 even without --strict');
canonical_fails('{"a":', qr/\Amatrix-tool: stdin: invalid JSON/,
                'canonical: truncated JSON is exit 1');
canonical_fails('{"a":1} x', qr/invalid JSON/,
                'canonical: trailing garbage is exit 1');
canonical_fails("{\"a\":\"\xff\"}", qr/invalid JSON/,
                'canonical: invalid UTF-8 is exit 1');
canonical_fails('{"a":1,"a":2}', qr/invalid JSON: duplicate/,
                'canonical: duplicate keys are exit 1');
canonical_fails('{"a":1,"\u0061":2}', qr/duplicate/,
                'canonical: duplicate keys are found after unescaping');
canonical_fails('', qr/invalid JSON/, 'canonical: empty stdin is exit 1');

{
    my ($rc, $out, $err) = tool(['canonical', 'extra']);
    ok($rc eq '2' && $err =~ /unexpected argument "extra"/,
       'canonical: an operand is a usage error (exit 2)');

    ($rc, $out, $err) = tool(['canonical', '--strict=yes']);
    ok($rc eq '2' && $err =~ /--strict takes no value/,
       'canonical: --strict=yes is a usage error (exit 2)');
}


# ---------------------------------------------------------------- sign-json

sub sign_is {
    my ($in, $want, $name, @args) = @_;
    my ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key,
                                 '--server', 'domain', @args], $in);

    is(visible($out), visible($want), $name)
        or diag("exit $rc, stderr: $err");
}

sign_is('{}', qq({"signatures":{"domain":{"ed25519:1":"$SIG_EMPTY"}}}),
        'sign-json: {} signed as in the spec');
sign_is('{"one": 1, "two": "Two"}',
        qq({"one":1,"signatures":{"domain":{"ed25519:1":"$SIG_ONE_TWO"}},)
        . '"two":"Two"}',
        'sign-json: {"one":1,"two":"Two"} signed as in the spec');
sign_is('{"two":"Two","unsigned":{"age_ts":-5,"x":[null]},"one":1,'
        . '"signatures":{"other.example":{"ed25519:x":"c2ln"},'
        . '"domain":{"ed25519:0":"b2xk","ed25519:1":"stale"}}}',
        '{"one":1,"signatures":{"domain":{"ed25519:0":"b2xk",'
        . qq("ed25519:1":"$SIG_ONE_TWO"},"other.example":{"ed25519:x":"c2ln"}},)
        . '"two":"Two","unsigned":{"age_ts":-5,"x":[null]}}',
        'sign-json: other signatures and "unsigned" kept, neither signed, '
        . 'a stale signature by the same key replaced');

{
    my ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key,
                                 '--server', 'domain'], '[1,2]');
    ok($rc eq '1' && $out eq ''
       && $err =~ /\Amatrix-tool: only a JSON object can be signed/,
       'sign-json: a non-object is exit 1');

    ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key,
                              '--server', 'domain'], '');
    ok($rc eq '1' && $out eq '' && $err =~ /\Amatrix-tool: stdin: invalid JSON/,
       'sign-json: empty stdin is exit 1');

    ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key,
                              '--server', 'domain'], '{"a":1.5}');
    ok($rc eq '1' && $out eq '' && $err =~ /fraction/,
       'sign-json: parses strictly (refuses 1.5)');

    ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key,
                              '--server', 'domain'], '{"signatures":[]}');
    ok($rc eq '1' && $out eq '' && $err =~ /"signatures" is not an object/,
       'sign-json: a "signatures" that is not an object is exit 1');

    ($rc, $out, $err) = tool(['sign-json', '--key', $spec_key], '{}');
    ok($rc eq '2' && $err =~ /--key and --server are required/
       && $err =~ /usage: matrix-tool sign-json/,
       'sign-json: without --server is a usage error (exit 2)');

    ($rc, $out, $err) = tool(['sign-json', '--key', "$dir/missing.key",
                              '--server', 'domain'], '{}');
    ok($rc eq '1' && $out eq '' && $err =~ /cannot open .*missing\.key/,
       'sign-json: a missing key file is exit 1');
}


# ---------------------------------------------------------------- verify-json

sub verify {
    my ($in, @args) = @_;

    return tool(['verify-json', @args], $in);
}

{
    my $signed = qq({"one":1,"signatures":{"domain":{"ed25519:1":)
                 . qq("$SIG_ONE_TWO"}},"two":"Two"});
    my @spec = ('--server', 'domain', '--key', "ed25519:1=$SPEC_PUB");

    my ($rc, $out, $err) = verify($signed, @spec);
    ok($rc eq '0' && $out eq "ok\n", 'verify-json: a signed object is ok')
        or diag("exit $rc, stdout: $out, stderr: $err");

    ($rc, $out) = verify(qq({ "two" : "Two", "unsigned": {"a": 1},\n)
                         . qq("signatures":{"domain":{"ed25519:1":)
                         . qq("$SIG_ONE_TWO"}}, "one" : 1 }), @spec);
    ok($rc eq '0' && $out eq "ok\n",
       'verify-json: ok in any key order and with "unsigned" added');

    ($rc, $out) = verify($signed, '--server=domain', "--key=ed25519:1=$SPEC_PUB=");
    ok($rc eq '0' && $out eq "ok\n",
       'verify-json: "--opt=value" forms and a padded public key');

    (my $tampered = $signed) =~ s/"Two"/"Three"/;
    ($rc, $out, $err) = verify($tampered, @spec);
    ok($rc eq '1' && $out eq '' && $err =~ /\Amatrix-tool: .*does not verify/,
       'verify-json: tampered content is exit 1');

    my ($wrong_pub) = (tool(['pubkey', '--key', "$dir/abc.key"]))[1]
        =~ / (\S+)$/;
    ($rc, $out, $err) = verify($signed, '--server', 'domain',
                               '--key', "ed25519:1=$wrong_pub");
    ok($rc eq '1' && $out eq '' && $err =~ /does not verify/,
       'verify-json: the wrong public key is exit 1');

    ($rc, $out, $err) = verify($signed, '--server', 'domain',
                               '--key', "ed25519:2=$SPEC_PUB");
    ok($rc eq '1' && $out eq '' && $err =~ /no signature by domain with ed25519:2/,
       'verify-json: the wrong key id is exit 1');

    ($rc, $out, $err) = verify($signed, '--server', 'other.example',
                               '--key', "ed25519:1=$SPEC_PUB");
    ok($rc eq '1' && $out eq '' && $err =~ /no signature by other\.example/,
       'verify-json: the wrong server is exit 1');

    ($rc, $out, $err) = verify('{"one":1,"two":"Two"}', @spec);
    ok($rc eq '1' && $out eq ''
       && $err =~ /\Amatrix-tool: no signature by domain with ed25519:1/,
       'verify-json: a missing signature is exit 1');

    ($rc, $out, $err) = verify('{"signatures":{"domain":{"ed25519:1":"!!"}}}',
                               @spec);
    ok($rc eq '1' && $err =~ /not valid base64/,
       'verify-json: a signature that is not base64 is exit 1');

    for my $bad ([$SPEC_PUB, 'a bare public key'],
                 ['ed25519:1', 'no "="'],
                 ["ed25519:=$SPEC_PUB", 'an empty version'],
                 ["rsa:1=$SPEC_PUB", 'another algorithm'],
                 ['ed25519:' . ('v' x 65) . "=$SPEC_PUB", 'a 65-character version'])
    {
        my ($key, $what) = @$bad;

        ($rc, $out, $err) = verify($signed, '--server', 'domain', '--key', $key);
        ok($rc eq '2' && $out eq '' && $err =~ /--key must look like/,
           "verify-json: --key with $what is a usage error (exit 2)")
            or diag("exit $rc, stderr: $err");
    }

    ($rc, $out, $err) = verify($signed, '--server', 'domain',
                               '--key', 'ed25519:1=c2hvcnQ');
    ok($rc ne '0' && $out eq '' && $err =~ /not 32 bytes of base64/,
       'verify-json: --key with a public key that is not 32 bytes is refused');

    ($rc, $out, $err) = verify('[]', @spec);
    ok($rc eq '1' && $err =~ /only a JSON object/,
       'verify-json: a non-object is exit 1');
}


# ---------------------------------------------------------------- x-matrix

# vectors.json x_matrix_request_signing_derived: the spec's key signs
my $XM_GET_URI = '/_matrix/federation/v1/query/profile'
                 . '?user_id=%40alice%3Aremote&field=displayname';
my $XM_GET_SIG = 'K+gI4o7RU3qxuH+0isGOhFR+ObA/nlZcL0YUf6t5WjEze1ZRxezG9nrt'
                 . '2f1KMw9Bz+q0OxY9i/fAMbQfTHC+Dg';
my $XM_PUT_SIG = 'y4NBl7OlEjEQowFyDkRKeRPbPzKkRXc+mSO25azvisfEZDZsnO3tdpIh'
                 . 'fvCM++SX9QcdAdrmUCUEoJfY4nAIAw';

sub x_matrix {
    my ($in, %o) = @_;

    return tool(['x-matrix', '--key', $o{key} // $spec_key,
                 '--origin', $o{origin} // 'domain',
                 '--destination', $o{destination} // 'remote',
                 '--method', $o{method} // 'GET',
                 '--uri', $o{uri} // $XM_GET_URI], $in);
}

sub x_matrix_is {
    my ($in, $sig, $name, %o) = @_;
    my ($rc, $out, $err) = x_matrix($in, %o);

    ok($rc eq '0' && $err eq ''
       && $out eq qq(X-Matrix origin="domain",destination="remote",)
                  . qq(key="ed25519:1",sig="$sig"\n), $name)
        or diag("exit $rc, stdout: $out, stderr: $err");
}

# refused: exit $code, nothing on stdout, $err_re on stderr
sub x_matrix_fails {
    my ($in, $code, $err_re, $name, @args) = @_;
    my ($rc, $out, $err) = tool(['x-matrix', @args], $in);

    ok($rc eq $code && $out eq '' && $err =~ /\Amatrix-tool: / && $err =~ $err_re,
       $name)
        or diag("exit $rc, stdout: $out, stderr: $err");
}

x_matrix_is('', $XM_GET_SIG, 'x-matrix: GET without a body, as in the vectors');
x_matrix_is(" \n\t\r\n", $XM_GET_SIG, 'x-matrix: a blank stdin is no body');
x_matrix_is(qq({ "pdus": [], "origin_server_ts": 1000000,\n  "edus": [], )
            . qq("origin": "domain" }\n), $XM_PUT_SIG,
            'x-matrix: PUT with a body in any order and spacing, as in the '
            . 'vectors', method => 'PUT', uri => '/_matrix/federation/v1/send/1234');

{
    my ($rc, $out) = x_matrix('{}');
    ok($rc eq '0' && $out =~ /sig="[A-Za-z0-9+\/]{86}"\n\z/
       && $out !~ /\Q$XM_GET_SIG\E/,
       'x-matrix: a body of {} is signed as content, unlike no body');

    my @spec = ('--key', $spec_key, '--origin', 'domain',
                '--destination', 'remote');

    x_matrix_fails('{"a":1.5}', 1, qr/stdin: .*fraction/,
                   'x-matrix: a body is parsed strictly (1.5 refused)',
                   @spec, '--method', 'PUT', '--uri', '/x');
    x_matrix_fails('{"a":', 1, qr/stdin: /,
                   'x-matrix: a body that is not JSON is exit 1',
                   @spec, '--method', 'PUT', '--uri', '/x');
    x_matrix_fails('', 1, qr/method/, 'x-matrix: a method with a space is exit 1',
                   @spec, '--method', 'G T', '--uri', '/x');
    x_matrix_fails('', 1, qr/does not start with "\/"/,
                   'x-matrix: an absolute URI is exit 1',
                   @spec, '--method', 'GET', '--uri', 'https://remote/x');
    x_matrix_fails('', 1, qr/visible ASCII/,
                   'x-matrix: a URI with a space is exit 1',
                   @spec, '--method', 'GET', '--uri', '/a b');
    x_matrix_fails('', 1, qr/origin is not a server name/,
                   'x-matrix: an origin that is not a server name is exit 1',
                   '--key', $spec_key, '--origin', 'a b', '--destination',
                   'remote', '--method', 'GET', '--uri', '/x');
    x_matrix_fails('', 1, qr/destination is not a server name/,
                   'x-matrix: an empty destination is exit 1',
                   '--key', $spec_key, '--origin', 'domain', '--destination',
                   '', '--method', 'GET', '--uri', '/x');
    x_matrix_fails('', 1, qr/cannot open .*missing\.key/,
                   'x-matrix: a missing key file is exit 1',
                   '--key', "$dir/missing.key", '--origin', 'domain',
                   '--destination', 'remote', '--method', 'GET', '--uri', '/x');
    x_matrix_fails('', 2, qr/--uri are required.*\nusage: matrix-tool x-matrix /,
                   'x-matrix: without --uri is a usage error (exit 2)',
                   @spec, '--method', 'GET');
    x_matrix_fails('', 2, qr/unexpected argument "extra"/,
                   'x-matrix: an operand is a usage error (exit 2)',
                   @spec, '--method', 'GET', '--uri', '/x', 'extra');

    ($rc, $out) = tool(['x-matrix', '--help']);
    ok($rc eq '0' && $out =~ /\Ausage: matrix-tool x-matrix --key FILE /,
       'x-matrix --help is exit 0 with its usage on stdout');
}

# signedjson, given the header, the request and the public key, checks
# the signature over {"method", "uri", "origin", "destination", "content"}
{
    my ($prc, undef, $perr) = python('import signedjson.key, signedjson.sign', '');

    SKIP: {
        skip "no python3-signedjson: $perr", 1 if $prc != 0;

        my $xm_key = "$dir/xm.key";
        my (undef, $kout) = tool(['keygen', '--version', 'xm', $xm_key]);
        my ($pub) = $kout =~ /\Aed25519:xm (\S+)\n\z/;
        $pub //= 'none';

        my @requests = (
            ['GET', $XM_GET_URI, 'hs.example', 'remote.example', undef],
            ['PUT', '/_matrix/federation/v1/send/t%2F1?a=b&c=%22&d',
             'a.example:8448', '[2001:db8::1]:8448',
             '{"pdus":[{"content":{"body":"h\u00e9llo \ud83d\ude00 \"q\"",'
             . '"n":[1,-2,{"x":null,"":true}]}}],"edus":[],'
             . '"origin":"a.example:8448","origin_server_ts":1700000000000}'],
            ['POST', '/_matrix/federation/v1/user/keys/query', '127.0.0.1:8448',
             'b.example', ' {"device_keys" : {"@u:b.example" : [ ]}} '],
            ['PUT', '/_matrix/federation/v2/invite/!r:a/$e', 'hs.example',
             'b.example', '[1,"two",{}]'],
        );

        my @checks;
        for my $r (@requests) {
            my ($method, $uri, $origin, $destination, $body) = @$r;
            my ($rc, $out, $err) = tool(['x-matrix', '--key', $xm_key,
                '--origin', $origin, '--destination', $destination,
                '--method', $method, '--uri', $uri], $body // '');

            push @checks, { header => $out, method => $method, uri => $uri,
                            destination => $destination, body => $body,
                            want => 'ok', tool => "exit $rc $err" };
        }

        # the same header for another request must not verify
        push @checks, { %{$checks[1]}, uri => $checks[1]{uri} . 'x',
                        want => 'fail' };
        push @checks, { %{$checks[2]}, body => undef, want => 'fail' };
        push @checks, { %{$checks[0]}, destination => 'other.example',
                        want => 'fail' };

        my ($rc, $out, $err) = python(<<'PY', JSON::PP->new->encode(\@checks), $pub);
import json, re, sys
import signedjson.key, signedjson.sign
from unpaddedbase64 import decode_base64
vk = signedjson.key.decode_verify_key_bytes("ed25519:xm",
                                            decode_base64(sys.argv[1]))
for c in json.loads(sys.stdin.read()):
    m = re.fullmatch(r'X-Matrix (.*)\n', c["header"])
    if not m:
        print("no header: %r" % c["header"])
        continue
    p = dict(re.findall(r'([a-z]+)="([^"\\]*)"(?:,|$)', m.group(1)))
    req = {"method": c["method"], "uri": c["uri"], "origin": p.get("origin"),
           "destination": c["destination"],
           "signatures": {p.get("origin"): {p.get("key"): p.get("sig")}}}
    if c["body"] is not None:
        req["content"] = json.loads(c["body"])
    try:
        assert sorted(p) == ["destination", "key", "origin", "sig"], p
        assert p["key"] == "ed25519:xm", p
        signedjson.sign.verify_signed_json(req, p["origin"], vk)
        print("ok")
    except Exception as e:
        print("fail: %r" % e)
PY

        my @got = split /\n/, $out;

        subtest 'x-matrix: signedjson verifies the header over the request'
                => sub {
            plan tests => scalar @checks;

            for my $i (0 .. $#checks) {
                my $c = $checks[$i];
                my $got = $got[$i] // 'missing';
                my $what = "$c->{method} $c->{uri} to $c->{destination}, "
                           . (defined $c->{body} ? 'a body' : 'no body');

                ok($c->{want} eq 'ok' ? $got eq 'ok' : $got =~ /\Afail: /,
                   ($c->{want} eq 'ok' ? 'verifies: ' : 'does not verify: ')
                   . $what)
                    or diag("python: $got; tool: $c->{tool}; stderr: $err");
            }
        };
    }
}


# ---------------------------------------------------------------- bad input

{
    my ($rc, $out, $err) = tool(['frobnicate']);
    ok($rc eq '2' && $out eq ''
       && $err =~ /\Amatrix-tool: unknown command "frobnicate"\n/
       && $err =~ /^usage: matrix-tool COMMAND/m && $err =~ /^  sign-json /m,
       'an unknown command is exit 2 with the usage on stderr');

    ($rc, $out, $err) = tool([]);
    ok($rc eq '2' && $out eq '' && $err =~ /\Ausage: matrix-tool COMMAND/,
       'no command is exit 2 with the usage on stderr');

    ($rc, $out, $err) = tool(['--help']);
    ok($rc eq '0' && $err eq '' && $out =~ /\Ausage: matrix-tool COMMAND/,
       '--help is exit 0 with the usage on stdout');

    ($rc, $out, $err) = tool(['sign-json', '--frob']);
    ok($rc eq '2' && $err =~ /unknown option "--frob"/,
       'an unknown option is exit 2');

    ($rc, $out, $err) = tool(['pubkey', '--key']);
    ok($rc eq '2' && $err =~ /--key needs a value/,
       'an option without its value is exit 2');

    ($rc, $out, $err) = tool(['verify-json', '--help']);
    ok($rc eq '0' && $out =~ /\Ausage: matrix-tool verify-json --server NAME/,
       'COMMAND --help is exit 0 with its usage on stdout');

    my $max = '{}' . (' ' x ($STDIN_MAX - 2));
    ($rc, $out, $err) = tool(['canonical'], $max);
    ok($rc eq '0' && $out eq '{}', 'stdin of exactly 16 MiB is read')
        or diag("exit $rc, stderr: $err");

    ($rc, $out, $err) = tool(['canonical'], $max . ' ');
    ok($rc eq '1' && $out eq ''
       && $err =~ /\Amatrix-tool: stdin is larger than $STDIN_MAX bytes/,
       'stdin of 16 MiB + 1 byte is exit 1');
}


# ---------------------------------------------------------------- differential

my $seed = $ENV{MATRIX_TOOL_SEED} // 40_040;
srand($seed);

my ($py_rc, undef, $py_err) = python(
    'import canonicaljson, signedjson.key, signedjson.sign', '');

SKIP: {
    skip "no python3-canonicaljson/python3-signedjson: $py_err", 3
        if $py_rc != 0;

    # random JSON text, exercising the parser's escapes and whitespace as
    # much as the serializer; only what both sides agree on (no reals, no
    # lone surrogates, no NUL in keys, integers in the safe range)

    my @special = ("\x{2028}", "\x{2029}", "\x{feff}", "\x{fffd}",
                   "\x{ffff}", "\x{10ffff}", "\x{1f600}", "e\x{301}",
                   "\x{7f}", "\x{80}", "\x{9f}", "\x{a0}", '/', '\\', '"');

    sub rand_char {
        my ($key) = @_;
        my $r = rand;

        return chr(0x20 + int rand 95) if $r < 0.45;
        return chr(($key ? 1 : 0) + int rand($key ? 31 : 32)) if $r < 0.55;
        return $special[int rand @special] if $r < 0.62;
        return chr(0xa0 + int rand 0x760) if $r < 0.75;

        if ($r < 0.87) {
            my $c = 0x800 + int rand(0x10000 - 0x800 - 0x800);
            return chr($c >= 0xd800 ? $c + 0x800 : $c);     # no surrogates
        }

        return chr(0x10000 + int rand 0x100000);
    }

    sub hex4 {
        my $h = sprintf '%04x', $_[0];
        return rand() < 0.5 ? $h : uc $h;
    }

    my %short = ("\b" => '\b', "\f" => '\f', "\n" => '\n', "\r" => '\r',
                 "\t" => '\t');

    sub string_text {
        my ($s) = @_;
        my $t = '"';

        for my $c (split //, $s) {
            my $o = ord $c;

            if ($c eq '"' || $c eq '\\') {
                $t .= rand() < 0.8 ? "\\$c" : '\\u' . hex4($o);
            } elsif ($o < 0x20) {
                $t .= $short{$c} && rand() < 0.7 ? $short{$c}
                                                 : '\\u' . hex4($o);
            } elsif ($c eq '/' && rand() < 0.5) {
                $t .= '\\/';
            } elsif (rand() < 0.75) {
                $t .= $c;
            } elsif ($o < 0x10000) {
                $t .= '\\u' . hex4($o);
            } else {
                $o -= 0x10000;
                $t .= '\\u' . hex4(0xd800 + ($o >> 10))
                    . '\\u' . hex4(0xdc00 + ($o & 0x3ff));
            }
        }

        return $t . '"';
    }

    sub rand_string {
        my ($key) = @_;
        my $n = rand() < 0.2 ? 0 : int rand 12;

        return join '', map { rand_char($key) } 1 .. $n;
    }

    sub ws {
        return '' if rand() < 0.7;
        return join '', map { (' ', "\t", "\n", "\r")[int rand 4] }
                        1 .. 1 + int rand 3;
    }

    sub rand_int {
        my $r = rand;

        return (0, 1, -1, 9007199254740991, -9007199254740991)[int rand 5]
            if $r < 0.1;
        return int(rand 2001) - 1000 if $r < 0.6;

        my $n = int(rand 2**26) * 2**27 + int(rand 2**27);     # < 2^53
        return rand() < 0.5 ? -$n : $n;
    }

    sub rand_value {
        my ($depth) = @_;
        my $r = rand;

        return object_text(rand_members($depth + 1, 0, 5))
            if $depth < 4 && $r < 0.15;

        return '[' . join(',', map { ws() . rand_value($depth + 1) . ws() }
                                   1 .. int rand 5) . ']'
            if $depth < 4 && $r < 0.27;

        $r = rand;
        return string_text(rand_string(0)) if $r < 0.4;
        return sprintf '%d', rand_int() if $r < 0.8;
        return ('true', 'false', 'null')[int rand 3];
    }

    sub rand_members {
        my ($depth, $min, $max) = @_;
        my (%seen, @m);
        my $n = $min + int rand($max - $min + 1);

        while (@m < $n) {
            my $k = rand_string(1);
            next if $seen{$k}++ || ($depth == 0 && $k =~ /\A(?:signatures|unsigned)\z/);
            push @m, ws() . string_text($k) . ws() . ':' . ws()
                     . rand_value($depth) . ws();
        }

        return @m;
    }

    sub object_text {
        return ws() . '{' . join(',', @_) . '}' . ws();
    }

    my $N = 50;
    my @members = map { [rand_members(0, 1, 8)] } 1 .. $N;
    my @plain = map { encode('UTF-8', object_text(@$_)) } @members;

    # for signing: some with "unsigned" and a signature by another server
    # ("unsigned" an object: signedjson.sign_json drops "unsigned": null)
    my @to_sign = map {
        my @m = @{$members[$_]};
        push @m, '"unsigned":' . object_text(rand_members(1, 0, 4))
            if $_ % 3 == 0;
        push @m, '"signatures":{"other.example":{"ed25519:zz":"c2lnbmF0dXJl"}}'
            if $_ % 4 == 0;
        encode('UTF-8', object_text(@m));
    } 0 .. $N - 1;

    # (a) canonical JSON, byte for byte

    my ($rc, $out, $err) = python(<<'PY', '[' . join(',', @plain) . ']');
import json, sys, canonicaljson
for v in json.loads(sys.stdin.buffer.read()):
    print(canonicaljson.encode_canonical_json(v).hex())
PY
    my @want = map { pack 'H*', $_ } split /\n/, $out;

    subtest "canonical matches canonicaljson.encode_canonical_json for $N "
            . 'random objects' => sub {
        plan tests => $N + 1;
        is(scalar @want, $N, 'python encoded them all') or diag($err);

        for my $i (0 .. $N - 1) {
            my ($trc, $tout, $terr) = tool(['canonical'], $plain[$i]);
            is(visible($tout), visible($want[$i]), "object $i")
                or diag("exit $trc, stderr: $terr\ninput: "
                        . visible($plain[$i]));
        }
    };

    # (b) matrix-tool signs, signedjson verifies

    my $tool_key = "$dir/tool.key";
    my ($krc, $kout, $kerr) = tool(['keygen', $tool_key]);
    my ($key_id, $pub) = $kout =~ /\A(\S+) (\S+)\n\z/;
    ($key_id, $pub) = ('ed25519:none', 'none') unless defined $pub;

    my @signed = map { (tool(['sign-json', '--key', $tool_key,
                              '--server', 'tool.example'], $_))[1] } @to_sign;

    ($rc, $out, $err) = python(<<'PY', '[' . join(',', @signed) . ']',
import sys
import signedjson.key, signedjson.sign
from canonicaljson import json
from unpaddedbase64 import decode_base64
key_id, pub, key_file = sys.argv[1:4]
with open(key_file) as f:
    sk = signedjson.key.read_signing_keys(f)[0]
mine = "%s:%s" % (sk.alg, sk.version)
theirs = signedjson.key.encode_verify_key_base64(sk.verify_key)
print("key file ok" if (mine, theirs) == (key_id, pub)
      else "key file holds %s %s" % (mine, theirs))
vk = signedjson.key.decode_verify_key_bytes(key_id, decode_base64(pub))
for i, v in enumerate(json.loads(sys.stdin.buffer.read())):
    try:
        signedjson.sign.verify_signed_json(v, "tool.example", vk)
        print("ok")
    except Exception as e:
        print("object %d: %r" % (i, e))
PY
        $key_id, $pub, $tool_key);

    subtest "matrix-tool sign-json, signedjson verifies, $N random objects"
            => sub {
        plan tests => 3;
        is($krc, 0, 'keygen') or diag($kerr);
        my ($first, @results) = split /\n/, $out;
        is($first, 'key file ok', 'signedjson reads the keygen file and '
           . 'derives the same public key') or diag($err);
        is_deeply(\@results, [('ok') x $N],
                  'signedjson.sign.verify_signed_json accepts every one')
            or diag($err);
    };

    # (c) signedjson signs, matrix-tool verifies and signs the same

    my $py_key = "$dir/py.key";

    ($rc, $out, $err) = python(<<'PY', '[' . join(',', @to_sign) . ']', $py_key);
import os, sys
import signedjson.key, signedjson.sign
from canonicaljson import json, encode_canonical_json
sk = signedjson.key.generate_signing_key("py_1")
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    signedjson.key.write_signing_keys(f, [sk])
print(signedjson.key.encode_verify_key_base64(sk.verify_key))
for v in json.loads(sys.stdin.buffer.read()):
    signed = signedjson.sign.sign_json(v, "py.example", sk)
    print(encode_canonical_json(signed).hex())
PY

    my ($py_pub, @py_signed) = split /\n/, $out;
    @py_signed = map { pack 'H*', $_ } @py_signed;
    $py_pub //= 'none';

    subtest "signedjson signs, matrix-tool verifies and signs the same, "
            . "$N random objects" => sub {
        plan tests => 1 + 3 * $N;
        is(scalar @py_signed, $N, 'python signed them all') or diag($err);

        for my $i (0 .. $N - 1) {
            my ($vrc, $vout, $verr) = tool(
                ['verify-json', '--server', 'py.example',
                 '--key', "ed25519:py_1=$py_pub"], $py_signed[$i] // '');
            ok($vrc eq '0' && $vout eq "ok\n", "object $i: verify-json ok")
                or diag("exit $vrc, stderr: $verr");

            my ($src, $sout, $serr) = tool(
                ['sign-json', '--key', $py_key, '--server', 'py.example'],
                $to_sign[$i]);

            my $mine = json_decode($sout);
            my $theirs = json_decode($py_signed[$i] // '');
            my $sig = sub {
                my ($v) = @_;
                return ref $v eq 'HASH'
                    ? ($v->{signatures}{'py.example'}{'ed25519:py_1'}
                       // 'missing') : 'not an object';
            };

            is($sig->($mine), $sig->($theirs),
               "object $i: sign-json signature equals signedjson's")
                or diag("exit $src, stderr: $serr");
            is(visible($sout), visible($py_signed[$i]),
               "object $i: sign-json output equals signedjson's, canonical")
                or diag('input: ' . visible($to_sign[$i]));
        }
    };
}

diag("random seed $seed: MATRIX_TOOL_SEED=$seed replays this run")
    unless Test::More->builder->is_passing;

done_testing();
