# Trusted notaries (matrix_federation_trusted_key_server): when a server's
# own key server cannot be reached or refuses, its keys are asked of the
# configured notaries in order (POST /_matrix/key/v2/query), and a relayed
# document is believed only when it is the server's, self-signed, and
# signed by the notary with a configured key.  Each origin below is a new
# server to this nginx, so that nothing is cached from an earlier case.

use strict;
use warnings;

use Test::More;
use JSON::PP;
use MIME::Base64 qw(encode_base64);

use MatrixPg;
use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();
plan skip_all => 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();

my $pg = MatrixPg->start;
$pg->silo_users;

sub key_text {
    my ($version) = @_;
    (my $seed = encode_base64(join('', map { chr int rand 256 } 1 .. 32), ''))
        =~ s/=+$//;
    return "ed25519 $version $seed";
}

my %notary_key = map { ($_ => key_text('n1')) } qw(notary1.test notary2.test);

my @origins = qw(direct.test down.test nosig.test badsig.test unconf.test
                 forged.test wrongname.test othername.test second.test);
my @names = (@origins, qw(notary1.test notary2.test));
my $fake = MatrixFakeHS->start(names => \@names, keys => \%notary_key);

# down.test has no address at all; the others' key servers answer 500
$fake->configure($_, { behaviour => { key => { status => 500 } } })
    for grep { $_ ne 'direct.test' && $_ ne 'down.test' } @origins;
$fake->configure('forged.test', { key_mode => 'forged' });
$fake->configure('wrongname.test', { key_mode => 'wrong_server_name' });
$fake->configure_global({ keys => { 'module.test' =>
    { 'ed25519:1' => $MatrixTest::SPEC_PUBLIC_KEY } } });

my %records = map {
    ($_ => { A => '127.0.0.1' },
     "_matrix-fed._tcp.$_" => { SRV => [[10, 5, $fake->port, $_]] })
} grep { $_ ne 'down.test' } @names;
my $dns = MatrixDNS->start(records => \%records);

my ($n1kid, $n1key) = $fake->public_key('notary1.test');
my ($n2kid, $n2key) = $fake->public_key('notary2.test');

sub start_nginx {
    my ($trusted) = @_;
    return MatrixNginx->start(http => <<"EOF",
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=2 timeout=3s;
@{[ $fake->nginx_federation($dns) ]}
$trusted
EOF
        server => '        location /_matrix/ { matrix; }');
}

my $BOTH = <<"EOF";
    matrix_federation_trusted_key_server notary1.test $n1kid=$n1key;
    matrix_federation_trusted_key_server notary2.test
        ed25519:other=$MatrixTest::SPEC_PUBLIC_KEY $n2kid=$n2key;
EOF

my $ngx = start_nginx($BOTH);

my $URI = '/_matrix/federation/v1/query/profile?user_id=%40alice%3Amodule.test';

sub get_as {
    my ($origin) = @_;
    my $auth = $fake->x_matrix($origin, method => 'GET', uri => $URI,
                               destination => 'module.test');
    my ($status, $head, $body) = $ngx->get($URI, Authorization => $auth);
    return ($status, $body);
}

sub asked {
    my ($notary, $origin) = @_;
    return scalar grep { $_->{method} eq 'POST'
                         && exists $_->{json}{server_keys}{$origin} }
           $fake->requests(server => $notary, endpoint => 'notary');
}

sub stored {
    my ($origin) = @_;
    return $pg->psql("SELECT from_server FROM matrix.server_key_json "
                     . "WHERE server_name = '$origin' ORDER BY 1");
}

sub notaries {
    my (%fields) = @_;
    $fake->configure($_, { notary_mode => undef, behaviour => undef,
                           signing_key => $notary_key{$_}, %fields })
        for qw(notary1.test notary2.test);
}

my ($status, $body);

# --- the server answers itself: no notary is asked -------------------------

($status) = get_as('direct.test');
is $status, 200, 'direct.test, its key server up: accepted';
is asked('notary1.test', 'direct.test') + asked('notary2.test', 'direct.test'),
    0, 'and no notary was asked';

# --- unreachable: the first notary vouches ----------------------------------

($status, $body) = get_as('down.test');
is $status, 200, 'down.test, not even in the DNS: accepted through a notary'
    or diag $ngx->error_log;
is asked('notary1.test', 'down.test'), 1, 'notary1 was asked';
is asked('notary2.test', 'down.test'), 0, 'notary2, second, was not';

my ($q) = grep { $_->{method} eq 'POST' }
          $fake->requests(server => 'notary1.test', endpoint => 'notary');
is $q->{path}, '/_matrix/key/v2/query', 'POST /_matrix/key/v2/query';
is_deeply $q->{json}, { server_keys => { 'down.test' => {} } },
    'asking for every key of down.test';
is $q->{origin}, 'module.test', 'X-Matrix signed as module.test';
ok $q->{verified}, 'with a signature that verifies';

is stored('down.test'), 'notary1.test',
    'the document is kept under the notary\'s name';
my $kept = decode_json(scalar $pg->psql("SELECT key_json FROM matrix.server_key_json "
                                 . "WHERE server_name = 'down.test'"));
is $kept->{server_name}, 'down.test', 'the server\'s document';
is_deeply [sort keys %{ $kept->{signatures} }], ['down.test'],
    'with its own signature, the notary\'s taken off';

# the notary endpoint of this server relays what it learnt so
($status, undef, $body) = $ngx->get('/_matrix/key/v2/query/down.test');
my ($relayed) = @{ decode_json($body)->{server_keys} };
is_deeply [sort keys %{ $relayed->{signatures} }], ['down.test', 'module.test'],
    'our notary endpoint relays it countersigned by us alone';

# --- refusals ---------------------------------------------------------------

sub refused {
    my ($origin, $name, $why) = @_;
    my ($status, $body) = get_as($origin);
    is $status, 401, "$name: refused";
    like $body, qr/keys of \Q$origin\E could not be fetched/,
        "$name: the keys could not be had";
    is asked('notary1.test', $origin) . asked('notary2.test', $origin), '11',
        "$name: both notaries were asked";
    like $ngx->error_log, qr/keys of "\Q$origin\E" through trusted notary "notary2\.test": .*$why/,
        "$name: logged with the notary and why";
    is stored($origin), '', "$name: nothing kept";
}

notaries(notary_mode => 'no_notary_signature');
refused('nosig.test', 'no notary signature',
        qr/not signed by the notary with a key configured/);

notaries(notary_mode => 'bad_notary_signature');
refused('badsig.test', 'a bad notary signature',
        qr/not signed by the notary with a key configured/);

# signed by the notaries, with keys this server was not told about
notaries(signing_key => key_text('n1'));
refused('unconf.test', 'a key not configured for the notary',
        qr/not signed by the notary with a key configured/);
notaries();

refused('forged.test', 'a forged self-signature',
        qr/a document was refused: .*(signature|verif)/i);
refused('wrongname.test', 'a document naming another server',
        qr/a document was refused: the document is not for this server/);

# a good document, of another server
my $other = $fake->sign_json('direct.test', {
    server_name => 'direct.test',
    valid_until_ts => (time + 86400) * 1000,
    verify_keys => { ($fake->public_key('direct.test'))[0] =>
                     { key => ($fake->public_key('direct.test'))[1] } } });
notaries(notary_documents => { 'othername.test' => $other });
refused('othername.test', 'the document of another server',
        qr/a document was refused: the document is not for this server/);
notaries(notary_documents => undef);

# --- the first notary fails, the second vouches -----------------------------

$fake->configure('notary1.test', { behaviour => { notary => { status => 500 } } });
($status, $body) = get_as('second.test');
is $status, 200, 'second.test: accepted through the second notary'
    or diag $body;
is asked('notary1.test', 'second.test'), 1, 'the first was asked';
is asked('notary2.test', 'second.test'), 1, 'and the second';
my @order = map { $_->{server} } grep { $_->{method} eq 'POST'
    && exists $_->{json}{server_keys}{'second.test'} }
    $fake->requests(endpoint => 'notary');
is "@order", 'notary1.test notary2.test', 'in the order configured';
like $ngx->error_log,
    qr/keys of "second\.test" through trusted notary "notary1\.test": it answered 500/,
    'the first one\'s failure is logged';
is stored('second.test'), 'notary2.test', 'kept under the second\'s name';

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

# --- after a restart: the notaries' documents, if still trusted -----------

notaries(behaviour => { notary => { status => 500 } });

$ngx = start_nginx($BOTH);
($status) = get_as('down.test');
is $status, 200, 'after a restart, down.test: accepted, from the database';
is asked('notary1.test', 'down.test'), 1, 'no notary asked again';
$ngx->stop;

$ngx = start_nginx(<<"EOF");
    matrix_federation_trusted_key_server notary2.test $n2kid=$n2key;
EOF
($status) = get_as('down.test');
is $status, 401, 'notary1 no longer trusted: its document is not believed';
($status) = get_as('second.test');
is $status, 200, 'notary2\'s still is';
$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

done_testing;
