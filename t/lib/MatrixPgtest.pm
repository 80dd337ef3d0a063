package MatrixPgtest;

# For the tests of the Postgres pool: an nginx with the module on a
# cluster (t/lib/MatrixPg.pm) and the test-only module t/pgtest, whose
# /sql location runs statements given in the query string, and a way to
# wait for what happens in the background.
#
#   my $ngx = pgtest_nginx($pg, pool => 'max=2 timeout=3s', http => '...');
#   sql($ngx, sql => 'SELECT $1', p1 => 'x');       # "1: ok\n  x\n"
#   eventually(5, sub { ... });                      # polls every 0.1 s

use strict;
use warnings;

use Exporter 'import';
use URI::Escape qw(uri_escape);
use Time::HiRes qw(time sleep);

use MatrixNginx;

our @EXPORT = qw(pgtest_nginx sql_url sql eventually);

sub pgtest_nginx {
    my ($pg, %o) = @_;

    my $pool = $o{pool} // 'max=2 timeout=3s';

    return MatrixNginx->start(workers => $o{workers} // 1, http => <<"EOF",
    matrix_postgres "@{[ $o{conninfo} // $pg->conninfo ]}" $pool;
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    @{[ $o{http} // '' ]}
EOF
        server => <<'EOF');
        location /_matrix/ { matrix; }
        location /sql { matrix_pgtest; }
        location /notes { matrix_pgtest_notifications; }
EOF
}

sub sql_url {
    my (%a) = @_;
    return '/sql?' . join '&', map { "$_=" . uri_escape($a{$_}) } sort keys %a;
}

# the /sql answer; in list context also the time it took and the status
sub sql {
    my ($ngx, %a) = @_;
    my ($status, undef, $body, $t) = $ngx->get(sql_url(%a));
    return wantarray ? ($body, $t, $status) : $body;
}

# Polls until $cond returns true or $secs pass.
sub eventually {
    my ($secs, $cond) = @_;
    my $deadline = time + $secs;

    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.1;
    }

    return $cond->();
}

1;
