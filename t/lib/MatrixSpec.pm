package MatrixSpec;

# Response (and request) bodies against the Matrix spec's schemas: the
# resolved OpenAPI bundles ../shared/spec/server-server.json and
# client-server.json, checked by t/tools/spec_validate.js (npm's ajv,
# JSON Schema 2020-12, and ajv-formats), one long-lived node process.
#
#   plan skip_all => MatrixSpec::skip_reason() if MatrixSpec::skip_reason();
#   my $v = MatrixSpec->start;
#   my @errors = $v->check('server-server', 'GET',
#       '/_matrix/federation/v1/query/directory?room_alias=...',
#       200, $body_json_text);          # () when the body is valid
#   $v->valid_ok('server-server', 'PUT', $path, 200, $body, 'send_join');
#   $v->invalid_ok(...same...);          # the body must be refused
#   my $a = $v->answer(...same...);      # {ok, errors, template, schema}
#
# PATH is the spec's template or a concrete path (its query is ignored).
# The body is JSON text (bytes, as received) or a Perl structure. A 4xx
# or 5xx status the operation does not declare is checked as a standard
# Matrix error body. Options of check/answer/valid_ok, as a hash ref
# after the body: {request => 1} checks a request body instead (status
# is then ignored).
#
# The npm packages come from t/tools/package.json, installed by the
# Makefile (npm ci) into $MATRIX_BUILD_DIR/node/node_modules; MX_SPEC_DIR
# (else the directory of MX_VECTORS, else ../shared/spec) holds the
# bundles.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Test::More ();

use MatrixJSONLines;

our @ISA = ('MatrixJSONLines');

my $ROOT = abs_path(dirname(__FILE__) . '/../..');

sub node_modules {
    my $build = $ENV{MATRIX_BUILD_DIR} // "$ROOT/build";
    return "$build/node/node_modules";
}

sub spec_dir {
    return $ENV{MX_SPEC_DIR} if $ENV{MX_SPEC_DIR};
    return dirname($ENV{MX_VECTORS}) if $ENV{MX_VECTORS};
    return abs_path("$ROOT/../shared/spec") // "$ROOT/../shared/spec";
}

sub node { -x '/usr/bin/node' ? '/usr/bin/node' : 'node' }

# true when node runs (the npm packages are then required: start dies
# without them)
sub available {
    return system('sh', '-c', node() . ' --version >/dev/null 2>&1') == 0;
}

# why the tests must be skipped, or undef. In CI (CI=true) never: a
# missing node or package is a failure there.
sub skip_reason {
    return undef if $ENV{CI};
    return 'node is not installed (apt-get install nodejs npm)'
        unless available();
    return 'no ajv in ' . node_modules() . ' (make test installs it)'
        unless -d node_modules() . '/ajv';
    return undef;
}

sub start {
    my ($class) = @_;

    my $mods = node_modules();
    die "MatrixSpec: no ajv in $mods: run 'make test' (npm ci)\n"
        unless -d "$mods/ajv";
    my $dir = spec_dir();
    die "MatrixSpec: no $dir/server-server.json\n"
        unless -f "$dir/server-server.json";

    return $class->SUPER::start(
        [node(), "$ROOT/t/tools/spec_validate.js", '--spec', $dir],
        env => { NODE_PATH => $mods }, what => 'spec_validate.js');
}

sub answer {
    my ($self, $api, $method, $path, $status, $body, $opt) = @_;

    my %q = (api => $api, method => $method, path => $path,
             status => $status, %{ $opt || {} });
    if (ref $body) {
        $q{body} = $body;
    } else {
        # the bytes as received: let node parse them
        my $text = $body // '';
        utf8::decode($text);
        $q{body_text} = $text;
    }

    return $self->ask(\%q);
}

sub check {
    my $a = shift->answer(@_);
    return $a->{ok} ? () : @{ $a->{errors} || ['not valid'] };
}

sub valid_ok { shift->_judge(1, @_) }
sub invalid_ok { shift->_judge(0, @_) }

# one test: the body is valid (WANT 1) or refused with reasons (WANT 0)
sub _judge {
    my ($self, $want, $api, $method, $path, $status, $body, @rest) = @_;
    my $opt = ref $rest[0] eq 'HASH' ? shift @rest : undef;
    my $name = $rest[0] // "$method $path $status: "
                          . ($want ? 'valid per the spec' : 'refused');

    my $a = $self->answer($api, $method, $path, $status, $body, $opt);
    my $ok = $want ? $a->{ok} : !$a->{ok} && @{ $a->{errors} || [] };
    local $Test::Builder::Level = $Test::Builder::Level + 2;
    Test::More::ok($ok, $name)
        or Test::More::diag(join "\n", 'against ' . ($a->{template} // '?')
                            . ' (' . ($a->{schema} // '-') . ')',
                            @{ $a->{errors} || [] });
    return $ok;
}

1;
