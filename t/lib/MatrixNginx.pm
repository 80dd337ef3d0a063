package MatrixNginx;

# An nginx with the module, for tests that need it running across several
# requests (nginx-tests style): the database tests stop and start
# Postgres under it, hold slow requests open while others run, and so on.
#
#   my $ngx = MatrixNginx->start(http => $http_block, workers => 1);
#   my ($status, $headers, $body) = $ngx->get('/_matrix/...');
#   my $s = $ngx->send_get('/slow');  ... ; $ngx->read_response($s);
#   $ngx->reload;   # SIGHUP, back once every worker is a new one
#   $ngx->error_log;   $ngx->stop;
#
# listen => 'reuseport' adds parameters to the server's listen: with
# reuseport the kernel spreads connections over all the workers.

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use IO::Select;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

sub _free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub start {
    my ($class, %o) = @_;

    my $self = bless { %o }, $class;

    $self->{dir} = tempdir('mxngx-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $self->{port} //= _free_port();
    mkdir "$self->{dir}/logs";

    my $modules = join '', map { "load_module $_;\n" }
                  split /\s+/, $ENV{TEST_NGINX_LOAD_MODULES} // '';
    my $workers = $o{workers} // 1;
    my $user = $> == 0 ? "user root root;\n" : '';

    my $conf = <<"EOF";
$modules
daemon off;
master_process on;
worker_processes $workers;
$user
error_log $self->{dir}/logs/error.log @{[ $o{log_level} // $ENV{MATRIX_NGINX_LOG_LEVEL} // 'info' ]};
pid $self->{dir}/logs/nginx.pid;
events { worker_connections 1024; }

http {
    access_log off;
    client_body_temp_path $self->{dir}/body;
    proxy_temp_path $self->{dir}/proxy;
    fastcgi_temp_path $self->{dir}/fastcgi;
    uwsgi_temp_path $self->{dir}/uwsgi;
    scgi_temp_path $self->{dir}/scgi;

$o{http}

    server {
        listen 127.0.0.1:$self->{port} @{[ $o{listen} // '' ]};
        server_name localhost;
$o{server}
    }
}
EOF

    $self->{conf} = "$self->{dir}/nginx.conf";
    open my $fh, '>', $self->{conf} or die;
    print $fh $conf;
    close $fh;

    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/logs/stdout.log";
        open STDERR, '>&', \*STDOUT;
        exec $bin, '-p', $self->{dir}, '-c', $self->{conf};
        exit 127;
    }

    $self->{pid} = $pid;
    $self->{owner} = $$;

    for (1 .. 200) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{port}");
        if ($s) {
            close $s;
            return $self;
        }

        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            die "nginx did not start:\n" . $self->error_log
                . _slurp("$self->{dir}/logs/stdout.log");
        }

        sleep 0.05;
    }

    die "nginx did not listen on $self->{port}";
}

sub port { $_[0]{port} }

sub _slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh>;
}

sub error_log { _slurp("$_[0]{dir}/logs/error.log") }

sub send_get {
    my ($self, $path, %h) = @_;
    return $self->send_request('GET', $path, undef, %h);
}

# METHOD PATH with BODY (bytes, or undef for none) and headers
sub send_request {
    my ($self, $method, $path, $body, %h) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{port}")
        or die "connect: $!";

    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    $req .= "$_: $h{$_}\r\n" for sort keys %h;
    $req .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    $req .= "\r\n";
    $req .= $body if defined $body;

    print $s $req;
    ${*$s}{mx_start} = time;

    return $s;
}

# (status, headers, body, seconds since sent); status 0 on timeout
sub read_response {
    my ($self, $s, $timeout) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + ($timeout // 30);

    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread $s, $buf, 65536, length $buf;
        last unless $n;
    }

    my $elapsed = time - ${*$s}{mx_start};
    close $s;

    return (0, '', '', $elapsed) unless $buf =~ /^HTTP\/1\.\d (\d+)/;

    my $status = $1;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;

    if ($head =~ /^Transfer-Encoding: chunked/mi) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr($body, 0, $len, '');
            $body =~ s/^\r\n//;
        }
        $body = $out;
    }

    return ($status, $head, $body, $elapsed);
}

sub get {
    my ($self, $path, %h) = @_;
    return $self->read_response($self->send_get($path, %h));
}

sub request {
    my ($self, $method, $path, $body, %h) = @_;
    return $self->read_response($self->send_request($method, $path, $body,
                                                    %h));
}

sub worker_pids {
    my ($self) = @_;
    my $master = $self->{pid};
    # ps right-aligns the pids: "  9123"
    return map { /^\s*(\d+)\s*$/ ? $1 : () }
           `ps -o pid= --ppid $master 2>/dev/null`;
}

sub reload {
    my ($self) = @_;

    my %old = map { $_ => 1 } $self->worker_pids;
    my $n = keys %old;

    kill 'HUP', $self->{pid};

    for (1 .. 200) {
        my @now = $self->worker_pids;
        return 1 if @now >= $n && !grep { $old{$_} } @now;
        sleep 0.05;
    }

    die "nginx did not reload:\n" . $self->error_log;
}

sub stop {
    my ($self) = @_;

    return unless $self->{pid};

    kill 'QUIT', $self->{pid};

    for (1 .. 200) {
        if (waitpid($self->{pid}, WNOHANG) == $self->{pid}) {
            delete $self->{pid};
            return;
        }
        sleep 0.05;
    }

    kill 'KILL', $self->{pid};
    waitpid($self->{pid}, 0);
    delete $self->{pid};
}

sub DESTROY {
    my ($self) = @_;
    $self->stop if $self->{owner} && $self->{owner} == $$;
}

1;
