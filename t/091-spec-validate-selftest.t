# The schema validator of the federation tests (t/tools/spec_validate.js:
# npm's ajv with its 2020-12 dialect and ajv-formats, over the spec's
# resolved OpenAPI bundles; t/lib/MatrixSpec.pm) checked on its own:
# hand-written bodies that are right pass, and bodies with a required
# field missing or of the wrong type are refused; every example response
# of both bundles validates, and each server-server example with one
# required field removed is refused.
#
#   make node-deps
#   MX_SPEC_DIR=../shared/spec prove -I t/runner -I t/lib -v t/091-spec-validate-selftest.t

use strict;
use warnings;

use Test::More;
use JSON::PP ();

use MatrixSpec;

my $skip = MatrixSpec::skip_reason();
plan skip_all => $skip if $skip;

my $v = MatrixSpec->start;
my $SS = 'server-server';
my $CS = 'client-server';

# ---------------------------------------------------------------- by hand

my $VERSION = '/_matrix/federation/v1/version';
my $DIR = '/_matrix/federation/v1/query/directory?room_alias=%23a%3Aexample.org';
my $PROFILE = '/_matrix/client/v3/profile/@u:example.org';
my $KEYS_QUERY = '/_matrix/federation/v1/user/keys/query';

# [valid?, api, method, path, status, body (JSON text or structure),
#  options, name]
my @CASES = (
    [1, $SS, GET => $VERSION, 200,
     '{"server":{"name":"ngx_http_matrix_module","version":"0.1"}}', undef,
     'version: a right body'],
    [0, $SS, GET => $VERSION, 200, '{"server":{"name":"x","version":1}}',
     undef, 'version: a number for a string is refused'],
    [0, $SS, GET => $VERSION, 200, '{"server":"x"}', undef,
     'version: a string for an object is refused'],
    [1, $SS, GET => $DIR, 200,
     '{"room_id":"!abc:example.org","servers":["example.org","b.example:8448"]}',
     undef, 'query/directory: a right body (a concrete path with a query)'],
    [0, $SS, GET => $DIR, 200, '{"room_id":"!abc:example.org"}', undef,
     'query/directory: servers missing is refused'],
    [0, $SS, GET => $DIR, 200,
     '{"room_id":"!abc:example.org","servers":"example.org"}', undef,
     'query/directory: servers as a string is refused'],
    [0, $SS, GET => $DIR, 200, '{"room_id":"!abc:example.org","servers":[8448]}',
     undef, 'query/directory: a number among servers is refused'],
    [1, $SS, GET => $DIR, 404,
     '{"errcode":"M_NOT_FOUND","error":"Room alias not found."}', undef,
     'query/directory: its declared 404'],
    [0, $SS, GET => $DIR, 404, '{"error":"no errcode"}', undef,
     'query/directory: a 404 without errcode is refused'],

    # statuses and bodies the spec does not allow
    [0, $SS, GET => $VERSION, 201, '{"server":{}}', undef,
     'an undeclared 2xx status is refused'],
    [1, $SS, GET => $VERSION, 401, '{"errcode":"M_UNAUTHORIZED","error":"no"}',
     undef, 'an undeclared 4xx: a standard error body passes'],
    [0, $SS, GET => $VERSION, 500, '{"error":"no errcode"}', undef,
     'an undeclared 5xx without errcode is refused'],
    [0, $SS, GET => $VERSION, 200, '{"server":', undef,
     'a body that is not JSON is refused'],
    [0, $SS, GET => '/_matrix/federation/v1/no_such_thing', 200, '{}', undef,
     'a path the spec does not have is refused'],
    [0, $SS, DELETE => $VERSION, 200, '{}', undef,
     'a method the spec does not have is refused'],

    # formats, the other bundle, request bodies
    [0, $SS, GET => '/_matrix/federation/v1/query/profile', 200,
     '{"displayname":"U","avatar_url":"https://example.org/a"}', undef,
     'an avatar_url that is not an mxc URI is refused'],
    [0, $CS, GET => $PROFILE, 200, '{"displayname":3}', undef,
     'client-server: the other bundle too'],
    [1, $CS, GET => $PROFILE, 200,
     '{"displayname":"U","avatar_url":"mxc://example.org/abc"}', undef,
     'client-server: a right profile'],
    [1, $SS, POST => $KEYS_QUERY, undef, '{"device_keys":{"@u:example.org":[]}}',
     { request => 1 }, 'a request body validates against requestBody'],
    [0, $SS, POST => $KEYS_QUERY, undef, '{"device_keys":[]}',
     { request => 1 }, 'a wrong request body is refused'],
);

for my $c (@CASES) {
    my ($want, @args) = @$c;
    $args[5] //= {};
    $want ? $v->valid_ok(@args) : $v->invalid_ok(@args);
}

my @e = $v->check($SS, 'GET', $DIR, 200, '{"room_id":5,"servers":[]}');
ok(scalar(grep { m{/room_id must be string} } @e),
   'check names the wrong field') or diag explain \@e;

# the template itself, and the most literal template of those that match
my $a = $v->answer($SS, 'GET', '/_matrix/federation/v1/query/directory',
                   200, { room_id => '!a:b', servers => [] });
is($a->{template}, '/_matrix/federation/v1/query/directory',
   'query/directory wins over query/{queryType}');
$a = $v->answer($SS, 'PUT',
                '/_matrix/federation/v2/send_join/%21r%3Ab/%24ev', 200, '{}');
is($a->{template}, '/_matrix/federation/v2/send_join/{roomId}/{eventId}',
   'an escaped concrete path finds its template');
ok(!$a->{ok} && (grep { /auth_chain/ } @{ $a->{errors} }),
   'send_join: an empty object lacks auth_chain')
    or diag explain $a;

# ---------------------------------------------------------------- bundles

for my $api ($SS, $CS) {
    my $c = $v->ask({ api => $api, compile_all => JSON::PP::true });
    ok($c->{ok} && $c->{count} > 50,
       "every JSON body schema of $api compiles ($c->{count})")
        or diag explain $c->{errors};
}

# every example response of the bundles is valid; a server-server example
# with a required top-level field removed is not
my $JSON = JSON::PP->new->utf8->canonical;
my ($examples, $good, $mutated) = (0, 0, 0);
for my $api ($SS, $CS) {
    my $file = MatrixSpec::spec_dir() . "/$api.json";
    open my $fh, '<:raw', $file or die "$file: $!";
    my $doc = $JSON->decode(do { local $/; <$fh> });
    for my $path (sort keys %{ $doc->{paths} }) {
        (my $template = $path) =~ s/\s+$//;
        for my $method (sort keys %{ $doc->{paths}{$path} }) {
            my $responses = $doc->{paths}{$path}{$method}{responses} || {};
            for my $status (sort keys %$responses) {
                my $json = ($responses->{$status}{content} || {})
                           ->{'application/json'} or next;
                for my $name (sort keys %{ $json->{examples} || {} }) {
                    my $ex = $json->{examples}{$name};
                    next unless exists $ex->{value};
                    my @args = ($api, uc $method, $template, $status);
                    my @err = $v->check(@args, $ex->{value});
                    $examples++;
                    if (@err) {
                        fail("example $name: @args");
                        diag join "\n", @err;
                    } else {
                        $good++;
                    }
                    next unless $api eq $SS && ref $ex->{value} eq 'HASH';
                    my ($req) = grep { exists $ex->{value}{$_} }
                                @{ $json->{schema}{required} || [] };
                    next unless defined $req;
                    my %cut = %{ $ex->{value} };
                    delete $cut{$req};
                    $mutated++;
                    $v->invalid_ok(@args, \%cut,
                                   "example without $req: @args");
                }
            }
        }
    }
}
cmp_ok($examples, '>', 200, "the bundles have $examples example bodies");
is($good, $examples, 'every example body validates');
cmp_ok($mutated, '>', 10, "$mutated mutated examples are refused");

done_testing;
