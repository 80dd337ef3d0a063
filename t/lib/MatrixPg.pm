package MatrixPg;

# A throwaway PostgreSQL cluster for one test file: initdb into a private
# temporary directory, a unix socket only (no TCP), trust authentication,
# durability off.  The first cluster of a run is initdb'd into
# $MATRIX_BUILD_DIR/pg-template and copied from there afterwards, which
# takes a tenth of the time.  As root the server runs as "postgres" (or
# "nobody"): initdb and postgres refuse to run as root.
#
#   my $pg = MatrixPg->start;
#   $ENV{TEST_NGINX_PG} = $pg->conninfo;     # "host=/tmp/... dbname=..."
#   $pg->psql('select 1');                   # dies on an SQL error
#   $pg->stop; $pg->start_again;             # the same cluster and data
#   $pg->silo_users;                         # matrix_silo.users with alice
#   $pg->example_silo;                       # examples/silo, mapped

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use File::Path qw(remove_tree);
use IPC::Run qw(run timeout);
use POSIX qw(getuid);

my @BINDIRS = reverse sort glob('/usr/lib/postgresql/*/bin');

sub bindir {
    return $ENV{PG_BINDIR} if $ENV{PG_BINDIR};

    for my $d (@BINDIRS) {
        return $d if -x "$d/initdb" && -x "$d/postgres";
    }

    die "MatrixPg: no PostgreSQL server (Debian: apt-get install postgresql)\n";
}

sub available {
    return eval { bindir(); 1 };
}

# as root, the user the server runs as
sub _server_user {
    return undef if getuid() != 0;

    for my $u (qw(postgres nobody)) {
        return $u if defined getpwnam($u);
    }

    die "MatrixPg: no unprivileged user to run postgres as\n";
}

sub _as_server {
    my ($self, @cmd) = @_;

    return @cmd unless $self->{user};

    # from /, without our Perl paths: the checkout may be out of its reach
    return ('runuser', '-u', $self->{user}, '--', 'env', '-C', '/',
            '-u', 'PERL5LIB', @cmd);
}

sub _run {
    my ($self, $cmd, %o) = @_;
    my ($out, $err) = ('', '');

    my $ok = run [$self->_as_server(@$cmd)], '<', \($o{in} // ''),
        '>', \$out, '2>', \$err, timeout($o{timeout} // 120);

    die "MatrixPg: @$cmd: $err$out" unless $ok || $o{may_fail};

    return wantarray ? ($ok, $out, $err) : $out;
}

sub _chown {
    my ($self, @paths) = @_;

    return unless $self->{user};

    my (undef, undef, $uid, $gid) = getpwnam($self->{user});
    system('chown', '-R', "$uid:$gid", @paths) == 0 or die "chown failed";
}

sub _template {
    my ($self) = @_;
    my $build = $ENV{MATRIX_BUILD_DIR};

    return undef unless $build && -d $build;

    my $tpl = "$build/pg-template";
    return $tpl if -f "$tpl/PG_VERSION";

    # initdb'd where the server's user can reach (a checkout under /root
    # is out of its reach), then copied in by us
    my $scratch = tempdir('mxpg-tpl-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    chmod 0755, $scratch;
    $self->_chown($scratch);
    mkdir "$scratch/data", 0700 or die "$scratch/data: $!";
    $self->_chown("$scratch/data");
    $self->_initdb("$scratch/data");

    my $tmp = "$tpl.$$";
    remove_tree($tmp);
    system('cp', '-a', "$scratch/data", $tmp) == 0 or die "cp $scratch";
    rename $tmp, $tpl or die "rename $tmp: $!";
    remove_tree($scratch);

    return $tpl;
}

sub _initdb {
    my ($self, $data) = @_;

    $self->_run([bindir() . '/initdb', '-D', $data, '-U', 'postgres',
                 '--auth=trust', '-E', 'UTF8', '--locale=C.UTF-8',
                 '--no-sync']);
}

sub start {
    my ($class, %opt) = @_;

    my $self = bless { user => _server_user(), pid_owner => $$, %opt },
        $class;

    # a short path: unix socket paths are limited to 107 bytes
    $self->{dir} = tempdir('mxpg-XXXXXX', TMPDIR => 1);
    chmod 0755, $self->{dir};
    $self->{data} = "$self->{dir}/data";
    $self->_chown($self->{dir});

    my $tpl = $self->_template;
    if ($tpl) {
        system('cp', '-a', $tpl, $self->{data}) == 0 or die "cp $tpl";
        $self->_chown($self->{data});

    } else {
        mkdir $self->{data}, 0700 or die "$self->{data}: $!";
        $self->_chown($self->{data});
        $self->_initdb($self->{data});
    }

    my $conf = "$self->{data}/postgresql.conf";
    open my $fh, '>>', $conf or die "$conf: $!";
    print $fh <<"EOF";
listen_addresses = ''
unix_socket_directories = '$self->{dir}'
unix_socket_permissions = 0777
max_connections = @{[ $opt{max_connections} // 200 ]}
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
log_min_messages = warning
EOF
    close $fh;

    $self->start_again;
    $self->psql('CREATE DATABASE matrix', db => 'postgres')
        unless $opt{no_database};

    return $self;
}

sub start_again {
    my ($self) = @_;

    $self->_run([bindir() . '/pg_ctl', '-D', $self->{data}, '-w', '-t', '60',
                 '-l', "$self->{dir}/server.log", '-o', '-c fsync=off',
                 'start']);
    $self->{running} = 1;
}

sub stop {
    my ($self, $mode) = @_;

    $self->_run([bindir() . '/pg_ctl', '-D', $self->{data}, '-w',
                 '-m', $mode // 'fast', 'stop'], may_fail => 1);
    $self->{running} = 0;
}

sub host { $_[0]{dir} }

sub conninfo {
    my ($self, $db) = @_;

    return "host=$self->{dir} dbname=" . ($db // 'matrix') . " user=postgres";
}

# Runs SQL through psql; returns its unaligned, tuples-only output.
sub psql {
    my ($self, $sql, %o) = @_;

    # as ourselves: the socket is open to all, authentication is trust.
    # A script longer than a pipe holds is given as a file: psql stops at
    # its first error (ON_ERROR_STOP), and the rest, left in the pipe,
    # would be a broken pipe of ours
    my ($out, $err, $file) = ('', '');
    my @cmd = ('psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
               '-h', $self->{dir}, '-U', 'postgres', '-d', $o{db} // 'matrix');
    my $in = \$sql;
    if (length $sql > 32768) {
        $file = "$self->{dir}/script-$$.sql";
        open my $fh, '>:raw', $file or die "$file: $!";
        print $fh $sql;
        close $fh;
        push @cmd, '-f', $file;
        $in = \'';
    }
    my $ok = run \@cmd, '<', $in, '>', \$out, '2>', \$err,
                 timeout($o{timeout} // 120);
    unlink $file if $file;

    die "psql: $err" unless $ok || $o{may_fail};
    chomp $out;

    return wantarray ? ($ok, $out, $err) : $out;
}

# the silo's users table, as the federation tests need it: one user,
# alice ('1', "Alice")
sub silo_users {
    my ($self) = @_;

    $self->psql(<<'SQL');
CREATE SCHEMA matrix_silo;
CREATE TABLE matrix_silo.users (user_id text PRIMARY KEY,
    localpart text UNIQUE NOT NULL, display_name text, avatar_url text,
    deactivated boolean NOT NULL DEFAULT false);
INSERT INTO matrix_silo.users VALUES ('1', 'alice', 'Alice', NULL, false);
SQL
}

sub log_file { "$_[0]{dir}/server.log" }

# The reference silo (examples/silo) as an operator sets it up: its
# schema and seed, the module's schema ($MATRIX_TOOL migrate), then the
# mapping (matrix.sql).  Dies with the reason.
sub example_silo {
    my ($self) = @_;
    my $silo = dirname(__FILE__) . '/../../examples/silo';

    my $slurp = sub {
        open my $fh, '<:raw', "$silo/$_[0]" or die "$silo/$_[0]: $!";
        local $/;
        return scalar <$fh>;
    };

    $self->psql($slurp->('schema.sql'));
    $self->psql($slurp->('seed.sql'));

    my ($out, $err) = ('', '');
    die "no MATRIX_TOOL\n" unless $ENV{MATRIX_TOOL};
    run [$ENV{MATRIX_TOOL}, 'migrate', $self->conninfo], '<', \'',
        '>', \$out, '2>', \$err, timeout(120)
        or die "matrix-tool migrate: $out$err";

    $self->psql($slurp->('matrix.sql'));
}

sub DESTROY {
    my ($self) = @_;

    return unless $self->{dir};
    return if $self->{pid_owner} && $self->{pid_owner} != $$;

    # IPC::Run is not to be used during global destruction
    if ($self->{running}) {
        system($self->_as_server(bindir() . '/pg_ctl', '-D', $self->{data},
                                 '-w', '-m', 'immediate', 'stop',
                                 '--silent'));
        $self->{running} = 0;
    }

    remove_tree($self->{dir}) unless $ENV{MATRIX_KEEP_PG};
}

1;
