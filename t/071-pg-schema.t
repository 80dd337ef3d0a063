# The module's own schema as nginx brings it up: several workers of
# several nginx instances starting at once on an empty database apply
# each migration exactly once; another schema name is honoured;
# "matrix_migrate off" waits for the operator's "matrix-tool migrate"
# and then serves without a reload.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use MatrixPg;
use MatrixNginx;
use MatrixTest qw(tool);
use MatrixPgtest qw(eventually);

plan skip_all => 'no PostgreSQL server' unless MatrixPg::available();

my $pg = MatrixPg->start;

sub silo_view {
    my ($schema) = @_;
    $pg->psql(<<"SQL");
CREATE SCHEMA IF NOT EXISTS $schema;
CREATE TABLE IF NOT EXISTS $schema.users (user_id text PRIMARY KEY,
    localpart text UNIQUE NOT NULL, display_name text, avatar_url text,
    deactivated boolean NOT NULL DEFAULT false);
INSERT INTO $schema.users VALUES ('1', 'alice', 'Alice', NULL, false)
    ON CONFLICT DO NOTHING;
SQL
}

sub nginx {
    my (%o) = @_;
    return MatrixNginx->start(workers => $o{workers} // 1, http => <<"EOF",
    matrix_postgres "@{[ $pg->conninfo ]}" max=2 timeout=3s;
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    @{[ $o{http} // '' ]}
EOF
        server => '        location /_matrix/ { matrix; }');
}


my $PROFILE = '/_matrix/client/v3/profile/@alice:example.org';

my @versions = map { /^(\d+)_/ ? $1 + 0 : () }
               map { (split m{/}, $_)[-1] } glob('sql/[0-9]*.sql');
plan skip_all => 'no migrations in sql/' unless @versions;
my $latest = $versions[-1];

silo_view('matrix_silo');

# --- a crowd starting at once on an empty database ---------------------------

{
    my @ngx = map { nginx(workers => 4) } 1 .. 3;

    ok eventually(20, sub {
        !grep { ($_->get($PROFILE))[0] != 200 } @ngx
    }), 'three nginx instances of four workers each serve';

    is $pg->psql('SELECT count(*), count(DISTINCT version), max(version) '
                 . 'FROM matrix.schema_migrations'),
       scalar(@versions) . '|' . scalar(@versions) . "|$latest",
       'every migration recorded exactly once';

    my $applied = 0;
    for my $ngx (@ngx) {
        $ngx->stop;
        my $log = $ngx->error_log;
        $applied += () = $log =~ /applied migration/g;
        unlike $log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
    }

    is $applied, scalar(@versions),
        'and applied by exactly one of the twelve workers';
}

# --- a restart finds nothing to do --------------------------------------------

{
    my $ngx = nginx();
    ok eventually(10, sub { ($ngx->get($PROFILE))[0] == 200 }), 'restarted';
    $ngx->stop;
    unlike $ngx->error_log, qr/applied migration/, 'nothing applied again';
}

# --- another schema name, quoted as an identifier ----------------------------

{
    silo_view('"Silo Views"');

    my $ngx = nginx(http => <<'EOF');
    matrix_schema "Matrix Data";
    matrix_silo_schema "Silo Views";
EOF
    ok eventually(10, sub { ($ngx->get($PROFILE))[0] == 200 }),
        'schema names needing quotes';
    is $pg->psql('SELECT max(version) FROM "Matrix Data".schema_migrations'),
        $latest, 'the module\'s tables went into the named schema';
    $ngx->stop;
    unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';
}

# --- matrix_migrate off: the operator migrates ---------------------------------

{
    my $ngx = nginx(http => "    matrix_schema by_hand;\n    matrix_migrate off;\n");

    ok eventually(10, sub { $ngx->error_log =~ /\[alert\].*by_hand.*matrix-tool migrate/ }),
        'an unmigrated schema is an alert that says what to do';

    my ($status, undef, $body) = $ngx->get($PROFILE);
    is $status, 503, 'requests needing the database get 503';
    like $body, qr/"errcode":"M_UNKNOWN"/, 'with a Matrix error';

    is $pg->psql(q{SELECT count(*) FROM pg_namespace WHERE nspname = 'by_hand'}),
        '0', 'and the module created nothing';

    my ($rc, $out, $err) = tool(['migrate', '--schema', 'by_hand',
                                 $pg->conninfo]);
    is $rc, 0, 'matrix-tool migrate' or diag $err;

    ok eventually(20, sub { ($ngx->get($PROFILE))[0] == 200 }),
        'the module notices without a reload';

    $ngx->stop;
}

done_testing;
