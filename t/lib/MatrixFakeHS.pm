package MatrixFakeHS;

# A fake remote Matrix homeserver for federation tests: t/tools/fake_hs.py
# (Debian's /usr/bin/python3, python3-aiohttp, python3-signedjson) over
# real TLS, with a private CA and a certificate per host name made by
# t/tools/make_test_ca.sh in a temporary directory. One process plays
# several Matrix servers, told apart by Host and SNI.
#
#   my $fake = MatrixFakeHS->start(names => ['remote.test', 'notary.test'],
#                                  aliases => {'remote.test' => ['target.test']});
#   $fake->port;          # its TLS port on 127.0.0.1
#   $fake->ca_file;       # the CA the module must trust
#   $fake->configure('remote.test', {key_mode => 'expired',
#       well_known => {'m.server' => 'target.test:' . $fake->port},
#       behaviour => {key => {delay_ms => 500}}});
#   $fake->configure_global({keys => {'module.test' => {$kid => $b64}}});
#   $fake->nginx_federation($dns);   # http{} lines: resolver, CA, allow_ip
#   my ($kid, $b64) = $fake->public_key('remote.test');
#   my $auth = $fake->x_matrix('remote.test', method => 'GET',
#       uri => '/_matrix/federation/v1/version', destination => 'module.test');
#   my $s = $fake->sign_event('remote.test', '10', \%event);
#       # {event => hashed and signed by remote.test, event_id => '$...'}
#   my $r = $fake->check_event('10', \%event, {'c.test' => {$kid => $b64}});
#       # {event_id, hash_ok, signatures_ok, redacted, required_servers,
#       #  errors => [...]}: checked by t/tools/mx_event.py
#   $fake->tls('remote.test', 'expired');     # or wrong_name, untrusted, ...
#   my @reqs = $fake->requests(endpoint => 'key');   # hashes, oldest first
#   $fake->reset;   $fake->stop;
#
# start options: names (the Matrix servers played; default remote.test),
# aliases ({name => [other host names]}: delegation targets, each with
# its own certificate), keys ({name => "ed25519 V SEED"}, else a new
# key), config ({name => {fields}}) and global ({fields}) to start with,
# https (number of TLS ports, default 1), port (the first TLS port's
# number, default: any free one), http (plain-HTTP ports, default
# 0), tls_dir (another fake's, to share its CA), cert_names (more hosts
# to make certificates for).
#
# A recorded request: n, connection (one number per TCP connection), ts,
# port, tls, sni, host, server (the server that answered, or undef),
# endpoint (key, well_known, notary, federation, other), method, path
# (as sent, with the query), headers ([[name, value], ...]), body, json,
# x_matrix ([{origin, destination, key, sig, verified, error,
# key_source}]), origin, verified, status (or "dropped", ...).
#
# The configuration fields are those of fake_hs.py (its CONFIG, BEHAVIOUR
# and GLOBAL tables; `fake_hs.py --help` lists them). configure() dies
# with the fake's message on an unknown field or a bad value, and then
# changes nothing.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP ();

our @ISA = ('MatrixFakeHS::Child');

my $TOOLS = abs_path(dirname(__FILE__) . '/../tools');
my $JSON = JSON::PP->new->utf8->canonical;

sub tools_dir { $TOOLS }

sub available {
    return system('/usr/bin/python3', '-c',
                  'import aiohttp, signedjson.sign, canonicaljson') == 0;
}

# 'name:8448' -> 'name', '[::1]:8448' -> '::1'
sub host_of {
    my ($name) = @_;

    return $1 if $name =~ /^\[([^\]]+)\]/;
    return $1 if $name =~ /^([^:]+):\d+$/;
    return $name;
}

sub _make_certs {
    my ($dir, @args) = @_;

    my $out = `$TOOLS/make_test_ca.sh @{[ map { _sh($_) } $dir, @args ]} 2>&1`;
    die "make_test_ca.sh @args: $out" if $?;

    return $out;
}

sub _sh {
    my ($s) = @_;
    $s =~ s/'/'\\''/g;
    return "'$s'";
}

sub start {
    my ($class, %o) = @_;

    my $self = bless { names => $o{names} || ['remote.test'],
                       aliases => $o{aliases} || {} }, $class;

    $self->{dir} = tempdir('mxfake-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $self->{tls_dir} = $o{tls_dir} // "$self->{dir}/tls";

    # a certificate for every host name: its own, so SNI picks it
    my %hosts;
    for my $name (@{ $self->{names} }) {
        $hosts{ lc host_of($_) } = 1
            for $name, @{ $self->{aliases}{$name} || [] };
    }
    $hosts{lc $_} = 1 for @{ $o{cert_names} || [] };
    my @certs = grep { !-f "$self->{tls_dir}/$_.crt" } sort keys %hosts;
    push @certs, 'default,localhost,127.0.0.1,::1'
        unless -f "$self->{tls_dir}/default.crt";
    _make_certs($self->{tls_dir}, @certs);

    my %servers;
    for my $name (@{ $self->{names} }) {
        my $s = $servers{$name} = { %{ $o{config}{$name} || {} } };
        $s->{aliases} = $self->{aliases}{$name} if $self->{aliases}{$name};
        $s->{signing_key} = $o{keys}{$name} if $o{keys} && $o{keys}{$name};
    }
    my $config = "$self->{dir}/config.json";
    open my $cf, '>', $config or die "$config: $!";
    print $cf $JSON->encode({ servers => \%servers,
                              global => $o{global} || {} });
    close $cf;

    my @https = ('127.0.0.1:0') x ($o{https} // 1);
    $https[0] = "127.0.0.1:$o{port}" if $o{port} && @https;

    my @cmd = ('/usr/bin/python3', "$TOOLS/fake_hs.py",
               '--tls-dir', $self->{tls_dir}, '--config', $config,
               '--parent', $$,
               (map { ('--https', $_) } @https),
               ('--http', '127.0.0.1:0') x ($o{http} // 0));

    my $ready = $self->_spawn(\@cmd, "$self->{dir}/fake_hs.log", 'fake_hs');

    my $ports = $JSON->decode($ready);
    $self->{https} = $ports->{https};
    $self->{http} = $ports->{http};
    $self->{control} = "http://127.0.0.1:$ports->{control}";
    $self->{ua} = HTTP::Tiny->new(timeout => 30);

    return $self;
}

sub port { $_[0]{https}[$_[1] // 0] }
sub ports { @{ $_[0]{https} } }
sub http_port { $_[0]{http}[$_[1] // 0] }
sub ca_file { "$_[0]{tls_dir}/ca.crt" }
sub tls_dir { $_[0]{tls_dir} }
sub control_url { $_[0]{control} }
sub names { @{ $_[0]{names} } }
# https://HOST:PORT/PATH (the server's host part) and, for curl,
# --resolve HOST:PORT:127.0.0.1
sub url {
    my ($self, $name, $path) = @_;
    return 'https://' . host_of($name) . ':' . $self->port . ($path // '/');
}

sub resolve {
    my ($self, $name) = @_;
    return host_of($name) . ':' . $self->port . ':127.0.0.1';
}

# the http{} lines that send an nginx under test to this fake: DNS's
# resolver (a MatrixDNS), this fake's CA, loopback allowed
sub nginx_federation {
    my ($self, $dns) = @_;

    return "    matrix_federation_resolver @{[ $dns->resolver ]} ipv6=off;\n"
         . "    matrix_federation_trusted_certificate @{[ $self->ca_file ]};\n"
         . "    matrix_federation_allow_ip 127.0.0.0/8;\n";
}

# a control request; returns the decoded JSON, dies unless 2xx
sub _control {
    my ($self, $method, $path, $body) = @_;

    my $res = $self->{ua}->request($method, "$self->{control}$path",
        defined $body ? { content => $JSON->encode($body),
                          headers => { 'Content-Type' => 'application/json' } }
                      : {});
    unless ($res->{success}) {
        my $msg = $res->{content} // '';
        $msg = $1 if $msg =~ /"error"\s*:\s*"((?:[^"\\]|\\.)*)"/;
        die "fake_hs $method $path: $res->{status} $msg\n";
    }

    return $JSON->decode($res->{content});
}

# merges FIELDS into NAME's configuration (a new name is a new server);
# undef restores a field's default
sub configure {
    my ($self, $name, $fields) = @_;
    return $self->_control('POST', '/_fake/config',
                           { %{ $fields || {} }, name => $name });
}

sub configure_global {
    my ($self, $fields) = @_;
    return $self->_control('POST', '/_fake/config', { global => $fields });
}

sub config { $_[0]->_control('GET', '/_fake/config') }

# the recorded requests (oldest first), optionally only those with the
# given server, endpoint, method or path prefix
sub requests {
    my ($self, %filter) = @_;

    my $q = join '&', map { "$_=" . _uri_escape($filter{$_}) }
            sort keys %filter;
    my $list = $self->_control('GET', '/_fake/requests' . ($q ? "?$q" : ''));

    return wantarray ? @$list : $list;
}

sub _uri_escape {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9._~\/-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

# clears the records (and the fetched keys); config => 1 also restores
# the configuration the fake started with
sub reset {
    my ($self, %o) = @_;
    $self->_control('POST', '/_fake/reset', { config => $o{config} ? 1 : 0 });
}

# (key ID, unpadded base64 public key) of NAME's first signing key
sub public_key {
    my ($self, $name) = @_;

    my $k = $self->_control('GET', '/_fake/keys')->{$name}
        or die "fake_hs plays no $name\n";

    return ($k->{key_id}, $k->{public_key});
}

# the Authorization header value of a request signed by ORIGIN (one of
# the fake's servers): method, uri (path and query as sent),
# destination, content (optional), forged => 1 for a bad signature
sub x_matrix {
    my ($self, $origin, %r) = @_;
    return $self->_control('POST', '/_fake/sign_request',
                           { %r, name => $origin })->{authorization};
}

# one header per URI of URIS (array ref), same method and destination
sub x_matrix_many {
    my ($self, $origin, $uris, %r) = @_;
    return @{ $self->_control('POST', '/_fake/sign_request',
                              { %r, uris => $uris, name => $origin })
                   ->{authorizations} };
}

sub sign_json {
    my ($self, $name, $obj, %o) = @_;
    return $self->_control('POST', '/_fake/sign_json',
                           { name => $name, json => $obj, %o });
}

# EVENT (a PDU of room version RV) with its content hash and NAME's
# signatures, as t/tools/mx_event.py makes them: {event, event_id};
# forged => 1 signs with other keys under the same key IDs
sub sign_event {
    my ($self, $name, $rv, $event, %o) = @_;
    return $self->_control('POST', '/_fake/sign_event',
                           { %o, name => $name, room_version => "$rv",
                             event => $event });
}

# EVENT checked by t/tools/mx_event.py: {event_id, hash_ok,
# signatures_ok, redacted, required_servers, errors => [...]}, and
# room_id for a v12 create event. KEYS ({server => {key_id => base64}})
# are used for their servers; other servers that must sign have the keys
# the fake uses for X-Matrix: its own servers', or the global "keys"
# (given, or fetched from a URL, e.g. the module's key server).
sub check_event {
    my ($self, $rv, $event, $keys) = @_;
    return $self->_control('POST', '/_fake/check_event',
                           { room_version => "$rv", event => $event,
                             $keys ? (keys => $keys) : () });
}

# Makes NAME present another certificate:
#   valid        its own (the default)
#   expired      its names, expired yesterday
#   not_yet      its names, valid from tomorrow
#   self_signed  its names, signed by itself
#   untrusted    its names, signed by another CA
#   wrong_name   a valid certificate for wrong.invalid only
sub tls {
    my ($self, $name, $kind) = @_;

    if ($kind eq 'valid') {
        return $self->configure($name, { tls_cert => undef,
                                         tls_key => undef });
    }

    my %opt = (expired => ['--expired'], not_yet => ['--not-yet'],
               self_signed => ['--self-signed'], untrusted => [],
               wrong_name => []);
    die "MatrixFakeHS::tls: unknown kind $kind\n" unless $opt{$kind};

    my $names = join ',', map { lc host_of($_) }
                $name, @{ $self->{aliases}{$name} || [] };
    $names = 'wrong.invalid' if $kind eq 'wrong_name';

    my $dir = $kind eq 'untrusted' ? "$self->{dir}/untrusted-ca"
                                   : $self->{tls_dir};
    my $base = lc(host_of($name)) . ".$kind";
    _make_certs($dir, @{ $opt{$kind} }, '--out', $base, $names)
        unless -f "$dir/$base.crt";

    return $self->configure($name, { tls_cert => "$dir/$base.crt",
                                     tls_key => "$dir/$base.key" });
}

# a certificate from this fake's CA for other names (an nginx under
# test, say): (cert file, key file)
sub cert {
    my ($self, $names, @opt) = @_;

    my $first = (split /,/, $names)[0];
    _make_certs($self->{tls_dir}, @opt, $names)
        unless -f "$self->{tls_dir}/$first.crt";

    return ("$self->{tls_dir}/$first.crt", "$self->{tls_dir}/$first.key");
}


# ------------------------------------------------------------------------
# A child process that says "NAME: ready DATA" on stdout once it serves,
# logs to a file, stops on SIGTERM and exits by itself when the test
# process is gone. MatrixFakeHS and MatrixDNS are such children.

package MatrixFakeHS::Child;

use IO::Select;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

# runs CMD with stderr to LOG; returns the DATA of its ready line, or
# dies with the log
sub _spawn {
    my ($self, $cmd, $log, $what) = @_;

    $self->{owner} = $$;
    $self->{errlog} = $log;

    pipe my $r, my $w or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        close $r;
        open STDOUT, '>&', $w or die;
        open STDERR, '>>', $log or die;
        exec @$cmd;
        exit 127;
    }
    close $w;
    $self->{pid} = $pid;
    $self->{out} = $r;    # kept open: the child never sees a broken pipe

    my $sel = IO::Select->new($r);
    my $line = '';
    my $deadline = time + 20;
    while ($line !~ /\n/ && time < $deadline) {
        last unless $sel->can_read($deadline - time);
        last unless sysread $r, $line, 4096, length $line;
    }

    return $1 if $line =~ /^\Q$what\E: ready (.*)$/m;

    $self->stop;
    die "$what did not start ($line):\n" . $self->error_log;
}

sub pid { $_[0]{pid} }

sub error_log {
    my ($self) = @_;
    open my $fh, '<', $self->{errlog} or return '';
    local $/;
    return scalar <$fh>;
}

sub stop {
    my ($self) = @_;

    return unless $self->{pid};

    kill 'TERM', $self->{pid};
    for (1 .. 100) {
        if (waitpid($self->{pid}, WNOHANG) == $self->{pid}) {
            delete $self->{pid};
            last;
        }
        sleep 0.02;
    }
    if ($self->{pid}) {
        kill 'KILL', $self->{pid};
        waitpid($self->{pid}, 0);
        delete $self->{pid};
    }
    close $self->{out} if $self->{out};
    delete $self->{out};
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{owner} && $self->{owner} == $$;
}

1;
