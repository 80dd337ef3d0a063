package MatrixTest;

# Fixtures shared by the nginx test suites: key files in a private
# temporary directory, exported to the configs as $TEST_NGINX_* variables
# (Test::Nginx substitutes those in every config section).

use strict;
use warnings;

use Exporter 'import';
use File::Temp qw(tempdir);
use IPC::Run qw(run timeout);

our @EXPORT_OK = qw(write_file tool python visible);

our $SPEC_SEED = 'YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1';
our $SPEC_PUBLIC_KEY = 'XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI';

my $dir = tempdir('matrix-test-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub write_file {
    my ($path, $content, $mode) = @_;

    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $content;
    close $fh or die "$path: $!";
    chmod $mode // 0600, $path;

    return $path;
}

sub key_file {
    my ($name, $content, $mode) = @_;

    return write_file("$dir/$name", $content, $mode);
}

# Runs $MATRIX_TOOL; returns (exit status or "signal N", stdout, stderr).
# stdin comes from a file, not a pipe: on a usage error the tool exits
# without reading it, and IPC::Run dies on the broken pipe.
sub tool {
    my ($args, $in) = @_;
    my ($out, $err) = ('', '');
    my $stdin = write_file("$dir/stdin", $in // '');

    run [$ENV{MATRIX_TOOL}, @$args], '<', $stdin, '>', \$out, '2>', \$err,
        timeout(30);

    return ($? & 127 ? 'signal ' . ($? & 127) : $? >> 8, $out, $err);
}

# runs an inline script with Debian's /usr/bin/python3 (its signedjson)
sub python {
    my ($script, $in, @args) = @_;
    my ($out, $err) = ('', '');

    run ['/usr/bin/python3', '-c', $script, @args], \$in, \$out, \$err,
        timeout(120);

    return ($? >> 8, $out, $err);
}

# bytes made readable for diagnostics: non-printable ASCII as \xNN
sub visible {
    my ($s) = @_;

    return undef unless defined $s;
    $s =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;

    return $s;
}

# the key of the spec's signing examples: "ed25519:1", public key above
$ENV{TEST_NGINX_MATRIX_KEY} = key_file('spec.key', "ed25519 1 $SPEC_SEED\n");

$ENV{TEST_NGINX_MATRIX_TWO_KEYS} = key_file('two.key',
    "ed25519 1 $SPEC_SEED\n\n"
    . "ed25519 second_key nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\n");

$ENV{TEST_NGINX_MATRIX_OPEN_KEY} =
    key_file('open.key', "ed25519 1 $SPEC_SEED\n", 0644);

$ENV{TEST_NGINX_MATRIX_BAD_SEED} = key_file('bad-seed.key',
    "ed25519 1 $SPEC_SEED\ned25519 2 c2hvcnQ\n");

$ENV{TEST_NGINX_MATRIX_BAD_ALG} = key_file('bad-alg.key',
    "rsa 1 $SPEC_SEED\n");

$ENV{TEST_NGINX_MATRIX_EMPTY_KEY} = key_file('empty.key', "\n");

$ENV{TEST_NGINX_MATRIX_NO_KEY} = "$dir/does-not-exist.key";

$ENV{TEST_NGINX_MATRIX_CHECK_KEY_DOC} = 't/tools/check_key_doc.py';

# runs a command with $input on its stdin, returns what it printed
sub pipe_through {
    my ($command, $input) = @_;

    require IPC::Run;
    my ($out, $err) = ('', '');
    IPC::Run::run(['/bin/sh', '-c', $command], \$input, \$out, \$err)
        or return "command failed: $command\n$err$out";

    return $out;
}

1;
