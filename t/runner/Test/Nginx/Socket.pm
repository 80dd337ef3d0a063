package Test::Nginx::Socket;

use strict;
use warnings;

our $VERSION = '0.1-subset';

# Set so that a suite (or the runner's own self-test) can tell this subset
# apart from the real Test::Nginx::Socket.
our $IS_LOCAL_SUBSET = 1;

=head1 NAME

Test::Nginx::Socket - a small, self-contained subset of Test::Nginx::Socket

=head1 SYNOPSIS

    use Test::Nginx::Socket 'no_plan';
    # or: use Test::Nginx::Socket; plan tests => repeat_each() * blocks() * 3;

    no_shuffle();
    run_tests();

    __DATA__

    === TEST 1: hello
    --- config
    location /t { return 200 "hello"; }
    --- request
    GET /t
    --- error_code: 200
    --- response_body chomp
    hello
    --- no_error_log
    [error]

Run with

    TEST_NGINX_BINARY=/usr/sbin/nginx prove -I t/runner -I t/lib t/

=head1 DESCRIPTION

This is a B<project-local replacement> for the CPAN distribution
Test::Nginx (Test::Nginx::Socket), which is neither packaged in Debian nor
installable here.  It was written from scratch; it reads the same block
format (via Debian's Test::Base), so a suite written for it also runs
under the real Test::Nginx, as long as it sticks to the sections listed
below.

How it differs from the real Test::Nginx:

=over

=item *

Only a subset of sections is supported (see L</SECTIONS>).  A section it
does not know is reported once per file with a C<diag> and otherwise
ignored.

=item *

nginx is started afresh, in the foreground (C<daemon off>,
C<master_process off> unless C<master_on()>), for B<every> block and
every repetition, and stopped (SIGQUIT, then SIGTERM, then SIGKILL)
before the error log is checked.  Nothing leaks from one block into the
next.  The log lines nginx writes from its "signal 3 (SIGQUIT) received"
line on are its shutdown log, checked by C<shutdown_error_log> only.

=item *

The server root is a private temporary directory per test file (so
C<prove -j N> works), removed at the end unless C<TEST_NGINX_NO_CLEAN> is
set; the port is probed per test file.

=item *

What nginx prints on its standard error while starting (the
configuration errors and warnings it reports before its own error log is
open) counts as part of the error log for C<error_log>, C<no_error_log>
and C<grep_error_log>, in every block, not only C<must_die> ones.

=item *

No default C<location /> is added to the server (so C<no_root_location>
is a no-op); nginx's server-level defaults still serve C<html/> (the
C<user_files>).

=item *

A block without C<request> or C<raw_request> only starts and stops nginx
(for its log checks); it fails if nginx does not start.

=item *

A C<--- name eval> whose Perl code dies fails the block (Test::Base
would silently make the error message the section's value).

=item *

Without any plan, the runner calls C<done_testing> at the end.

=item *

No pipelined requests (an array of requests is sent one connection
after the other, each checked against the same index of array-valued
checks), no HTTP/2, SSL, UDP/TCP mocks,
stap, C<--- curl>, benchmark or check-leak modes.

=back

=head1 SECTIONS

Configuration: C<main_config>, C<http_config>, C<config> (inside the one
C<server { listen 127.0.0.1:PORT; server_name localhost; ... }>),
C<user_files> (C<< >>> name >> headers, or C<eval> giving
C<[[name, content], ...]>), C<log_level>, C<must_die>.

Request: C<request> (first line C<METHOD URI [HTTP/1.x]>, leading
blank and C<#> lines skipped, the following lines are the body, without
its last newline), C<raw_request> (sent byte for byte), C<more_headers>,
C<timeout> (seconds, default 3), C<wait> (seconds to sleep after the
response), C<ignore_response>.

Checks: C<error_code>, C<error_code_like>, C<response_headers>
(C<Name: value> exact, C<!Name> absent, C<Name:> absent or empty),
C<response_headers_like> (C<Name: regex>, anchored to the whole value),
C<response_body> (exact, with a diff), C<response_body_like> and
C<response_body_unlike> (unanchored, C</s>), C<response_body_filters>
(a code ref, a list of them, or names: C<uc>, C<lc>, or a function of
C<main::>), C<error_log> and C<no_error_log> (one pattern a line, or via
C<eval> a C<qr//>, a string or an array ref of them; matched against
each line of the log), C<shutdown_error_log> and
C<no_shutdown_error_log> (the same, on the shutdown log),
C<grep_error_log> and C<grep_error_log_out> (every match of the pattern,
each followed by a newline, compared with a string or a C<qr//>).

Each check is one assertion named like
C<TEST 1: name - status code ok>; the status is checked in every block
that sends a request (200 unless C<error_code> says otherwise), except
with C<ignore_response>.  A C<must_die> block has one assertion that
nginx failed to start, then its log checks.  On a failure, the block's
log entries at C<warn> or worse are printed with C<diag>.

Every section takes Test::Base filters after its name (C<chomp>, C<eval>,
...), and C<--- name: value> one-liners.  C<ONLY>, C<SKIP> and C<LAST>
work as in Test::Base.

In C<main_config>, C<http_config>, C<config>, C<request>, C<raw_request>
and C<more_headers>, every C<$TEST_NGINX_NAME> is replaced by
C<$ENV{TEST_NGINX_NAME}>; an undefined one fails the block.

=head1 ENVIRONMENT

C<TEST_NGINX_BINARY> (default: C<nginx> on C<PATH>, then
C</usr/sbin/nginx>), C<TEST_NGINX_LOAD_MODULES> (space-separated C<.so>
paths, each becoming a C<load_module> line at the top of nginx.conf),
C<TEST_NGINX_SERVER_PORT> or C<TEST_NGINX_PORT> (default: a free port
probed per file), C<TEST_NGINX_SERVROOT> (default: a private directory
under C<$TMPDIR>), C<TEST_NGINX_NO_CLEAN> (keep the server root; its
F<logs/error.log> holds the whole file's log, each block headed by a
C<### runner:> line), C<TEST_NGINX_NO_SHUFFLE>, C<TEST_NGINX_TIMEOUT>
(default request timeout), C<TEST_NGINX_LOG_LEVEL> (default C<debug>),
C<TEST_NGINX_USE_VALGRIND> (run nginx under valgrind; its reports are
printed with C<diag>).

The runner sets C<TEST_NGINX_SERVER_PORT>, C<TEST_NGINX_PORT>,
C<TEST_NGINX_SERVROOT> and C<TEST_NGINX_HTML_DIR> for the suite.

=head1 FUNCTIONS

C<run_tests>, C<plan>, C<blocks>, C<repeat_each>, C<no_shuffle>,
C<no_root_location>, C<no_long_string>, C<html_dir>, C<server_root>,
C<server_port>, C<log_level>, C<master_on>, C<master_off>, C<workers>,
C<env_to_nginx>, C<add_block_preprocessor>, and Test::More's C<ok>,
C<is>, C<isnt>, C<like>, C<unlike>, C<is_deeply>, C<pass>, C<fail>,
C<diag>, C<note>, C<done_testing>.

=cut

use Errno qw(EINTR EAGAIN ECONNRESET);
use File::Basename qw(basename);
use File::Path qw(make_path remove_tree);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use List::Util qw(shuffle);
use POSIX qw(WNOHANG);
use Test::More import => [qw(
    plan ok is isnt like unlike is_deeply pass fail diag note done_testing
)];
use Time::HiRes qw(time sleep);

# Loading Test::Base installs a global $SIG{__DIE__}; keep ours as it was.
# We never call Test::Base->import, so its END-block "run_compare" (and its
# plan guessing) stays inactive: we own the plan.
BEGIN {
    my $die_handler = $SIG{__DIE__};
    require Test::Base;
    require Test::Base::Filter;
    $SIG{__DIE__} = $die_handler;
}

use Exporter ();
our @EXPORT = qw(
    run_tests plan blocks repeat_each no_shuffle no_root_location
    no_long_string html_dir server_root server_port log_level
    master_on master_off workers env_to_nginx add_block_preprocessor
    ok is isnt like unlike is_deeply pass fail diag note done_testing
);


# ---------------------------------------------------------------------------
# settings

our $RepeatEach = 1;
our $NoShuffle = $ENV{TEST_NGINX_NO_SHUFFLE} ? 1 : 0;
our $LogLevel = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = 0;
our $Workers = 1;
our $NoLongString = 0;
our @EnvToNginx;
our @BlockPreprocessors;

our $ServerName = 'localhost';
our ($ServerPort, $ServRoot, $HtmlDir, $NginxBinary);
our $PortFixed = 0;
our $DefaultTimeout = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $UseValgrind = $ENV{TEST_NGINX_USE_VALGRIND} ? 1 : 0;

my $OWN_SERVROOT = 0;     # a temporary directory we remove at the end
my $PARENT_PID = $$;
my $RUNNING;               # { pid => ... } of the current nginx
my $BASE;                  # the Test::Base object holding the blocks
my %WARNED_SECTION;
my $NGINX_HAS_E_OPTION;

my @RESPONSE_SECTIONS = qw(
    error_code error_code_like response_headers response_headers_like
    response_body response_body_like response_body_unlike
);

my %KNOWN_SECTIONS = map { $_ => 1 } qw(
    main_config http_config config user_files log_level must_die
    request raw_request more_headers timeout wait ignore_response
    error_code error_code_like response_headers response_headers_like
    response_body response_body_like response_body_unlike
    response_body_filters error_log no_error_log
    shutdown_error_log no_shutdown_error_log
    grep_error_log grep_error_log_out
    ONLY SKIP LAST
);

sub repeat_each {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub no_shuffle       { $NoShuffle = 1 }
sub no_root_location { 1 }                 # we never add one
sub no_long_string   { $NoLongString = 1 }
sub html_dir         { $HtmlDir }
sub server_root      { $ServRoot }
sub server_port      { $ServerPort }
sub master_on        { $MasterProcessEnabled = 1 }
sub master_off       { $MasterProcessEnabled = 0 }

sub log_level {
    $LogLevel = shift if @_;
    return $LogLevel;
}

sub workers {
    $Workers = shift if @_;
    return $Workers;
}

sub env_to_nginx { push @EnvToNginx, @_ }

sub add_block_preprocessor {
    my $code = shift;
    die "add_block_preprocessor needs a code ref\n" unless ref $code eq 'CODE';
    push @BlockPreprocessors, $code;
}

# ---------------------------------------------------------------------------
# import: plan arguments, server root, port

sub import {
    my ($class, @args) = @_;

    my $tb = Test::More->builder;
    if (@args && !$tb->has_plan) {
        if (@args == 1 && $args[0] eq 'no_plan') {
            $tb->no_plan;
        }
        else {
            $tb->plan(@args);
        }
    }

    _setup_once();

    # as Test::Base does for the real Test::Nginx: the suite runs strict
    strict->import;
    warnings->import;

    local $Exporter::ExportLevel = 1;
    return Exporter::import($class);
}

my $setup_done = 0;

sub _setup_once {
    return if $setup_done++;

    $NginxBinary = _find_binary();

    if ($ENV{TEST_NGINX_SERVROOT}) {
        $ServRoot = File::Spec->rel2abs($ENV{TEST_NGINX_SERVROOT});
        remove_tree(map { "$ServRoot/$_" } qw(conf html logs tmp));
    }
    else {
        (my $name = basename($0)) =~ s/[^\w.-]+/_/g;
        $ServRoot = tempdir("nginx-test-$name-XXXXXX", TMPDIR => 1);
        $OWN_SERVROOT = 1;
    }
    $HtmlDir = "$ServRoot/html";
    make_path(map { "$ServRoot/$_" }
        qw(conf html logs tmp/client_body tmp/proxy tmp/fastcgi tmp/uwsgi
           tmp/scgi));

    my $port = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT};
    if ($port) {
        $ServerPort = $port;
        $PortFixed = 1;
    }
    else {
        $ServerPort = _pick_port();
    }

    _export_env();

    $DefaultTimeout *= 10 if $UseValgrind;
}

sub _export_env {
    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    $ENV{TEST_NGINX_PORT} = $ServerPort unless $PortFixed;
    $ENV{TEST_NGINX_SERVROOT} = $ServRoot;
    $ENV{TEST_NGINX_HTML_DIR} = $HtmlDir;
}

sub _find_binary {
    return $ENV{TEST_NGINX_BINARY} if $ENV{TEST_NGINX_BINARY};
    for my $dir (File::Spec->path) {
        return "$dir/nginx" if -x "$dir/nginx" && !-d "$dir/nginx";
    }
    return '/usr/sbin/nginx';
}

# A port nobody listens on, away from the ephemeral range (32768-60999),
# spread by pid so that parallel test files rarely probe the same one.
sub _pick_port {
    my %avoid = map { $_ => 1 } @_;
    my $span = 20000;
    my $start = 10000 + ($$ * 7 + int(rand(1000))) % $span;
    for my $i (0 .. 199) {
        my $port = 10000 + ($start - 10000 + $i * 13) % $span;
        next if $avoid{$port};
        my $sock = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1',
            LocalPort => $port,
            Proto     => 'tcp',
            Listen    => 1,
            ReuseAddr => 1,
        ) or next;
        close $sock;
        return $port;
    }
    die "Test::Nginx::Socket: no free port found\n";
}

# ---------------------------------------------------------------------------
# blocks

sub _base {
    return $BASE if $BASE;
    $BASE = Test::Base->new;
    return $BASE;
}

# blocks([SECTION]): the number of blocks (having that section) in scalar
# context, the filtered blocks in list context, as Test::Base's blocks().
sub blocks {
    my ($section) = @_;
    my $list = _base()->block_list;
    $list = [ grep { exists $_->{$section} } @$list ] if defined $section;
    return scalar @$list unless wantarray;
    for my $block (@$list) {
        $block->run_filters unless $block->is_filtered;
    }
    return @$list;
}

# A section's value, or undef.  Always in scalar context: a Test::Base
# block returns an empty list for a section it does not have.
#
# While one request of an array-valued "--- request" runs, %PerRequest
# holds that request and the matching element of each array-valued check.
our %PerRequest;

sub _get {
    my ($block, $section) = @_;
    return $PerRequest{$section} if exists $PerRequest{$section};
    return scalar $block->$section;
}

# ---------------------------------------------------------------------------
# the run

sub run_tests {
    my @blocks = blocks();

    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
    }

    @blocks = shuffle @blocks unless $NoShuffle;

    for my $block (@blocks) {
        _warn_unknown_sections($block);
        for my $rep (1 .. $RepeatEach) {
            _run_block($block, $rep);
        }
    }

    return;
}

sub _warn_unknown_sections {
    my ($block) = @_;
    for my $section (@{ $block->{_section_order}[0] || [] }) {
        next if $KNOWN_SECTIONS{$section} || $WARNED_SECTION{$section}++;
        Test::More::diag("Test::Nginx::Socket (local subset): section"
            . " '--- $section' is not supported and was ignored");
    }
}

sub _run_block {
    my ($block, $rep) = @_;

    my $name = $block->name;
    $name .= " (repeat $rep of $RepeatEach)" if $RepeatEach > 1;

    my $t = { name => $name, failed => 0,
              log_offset => -s _error_log_file() || 0 };

    my $ok = eval { _run_block_checks($block, $t); 1 };
    my $err = $@;
    _stop_nginx($t);
    _report_valgrind($t) if $UseValgrind;
    if (!$ok) {
        chomp $err;
        _check($t, 0, 'runner error', $err);
    }
    if ($t->{failed}) {
        _diag_logs($t);
    }
}

# one assertion; the name is "TEST n: name - what"
sub _check {
    my ($t, $pass, $what, @diag) = @_;
    my $tb = Test::More->builder;

    # report failures at the suite's call of run_tests(), not in here
    my $frame = 0;
    $frame++ while (caller $frame)[0] && (caller $frame)[0] eq __PACKAGE__;
    local $Test::Builder::Level = $frame + 1;

    $tb->ok($pass, "$t->{name} - $what");
    if (!$pass) {
        $t->{failed}++;
        $tb->diag(join "\n", grep { defined && length } @diag) if @diag;
    }
    return $pass;
}

# Test::Base's "eval" filter turns the error of Perl code that dies into
# the section's value; make that an error of the block instead.
sub _check_evals {
    my ($block) = @_;
    my $map = $block->{_section_map}[0] || {};
    for my $section (sort keys %$map) {
        next unless ($map->{$section}{filters} // '') =~ /\beval\b/;
        my $value = _get($block, $section);
        next if ref $value || !defined $value;
        die "--- $section eval: the Perl code died: $value"
            if $value =~ /\bat \(eval \d+\) line \d+\b/;
    }
}

sub _run_block_checks {
    my ($block, $t) = @_;

    _check_evals($block);

    my $must_die = defined _get($block, 'must_die');

    my $started = _start_for_block($block, $t, $must_die);

    if ($must_die) {
        if ($started->{running}) {
            _check($t, 0, 'nginx failed to start as expected',
                'nginx started and accepted connections');
        }
        else {
            _check($t, 1, 'nginx failed to start as expected');
        }
        _stop_nginx($t);
        _check_logs($block, $t);
        return;
    }

    # A block without a request only starts nginx (to check its log).
    my $has_request = defined _get($block, 'request')
        || defined _get($block, 'raw_request');
    if (!$has_request) {
        my @checks = grep { defined _get($block, $_) } @RESPONSE_SECTIONS;
        die "--- @checks: no '--- request' to check\n" if @checks;
        if (!$started->{running}) {
            _check($t, 0, 'nginx started', $started->{reason});
        }
        _wait($block);
        _stop_nginx($t);
        _check_logs($block, $t);
        return;
    }

    # An array of requests: sent one after the other, each on its own
    # connection, each checked against the same index of array checks.
    my $requests = _get($block, 'request');
    my @runs = ref $requests eq 'ARRAY'
        ? map {
              my $i = $_;
              my %per = (request => $requests->[$i]);
              for my $section (@RESPONSE_SECTIONS) {
                  my $v = _get($block, $section);
                  $per{$section} = $v->[$i] if ref $v eq 'ARRAY';
              }
              \%per;
          } 0 .. $#$requests
        : ({});

    my @results;
    for my $per (@runs) {
        local %PerRequest = %$per;
        if (!$started->{running}) {
            push @results, { error => "nginx did not start: $started->{reason}" };
        }
        else {
            push @results, _do_request($block, $t);
        }
    }
    _wait($block) if $started->{running};

    _stop_nginx($t);

    for my $i (0 .. $#runs) {
        local %PerRequest = %{ $runs[$i] };
        _check_response($block, $t, $results[$i])
            unless defined _get($block, 'ignore_response');
    }
    _check_logs($block, $t);
}

sub _wait {
    my ($block) = @_;
    my $wait = _get($block, 'wait');
    sleep $wait if defined $wait && $wait > 0;
}

# ---------------------------------------------------------------------------
# nginx.conf

sub _expand_env {
    my ($text, $what) = @_;
    return $text unless defined $text && !ref $text;
    $text =~ s{\$(TEST_NGINX_[A-Za-z0-9_]+)}{
        defined $ENV{$1} ? $ENV{$1}
            : die "$what: no environment variable $1 defined\n"
    }ge;
    return $text;
}

sub _section_text {
    my ($block, $section) = @_;
    my $value = _get($block, $section);
    return '' unless defined $value;
    $value = join "\n", @$value if ref $value eq 'ARRAY';
    return _expand_env($value, "--- $section");
}

sub _write_config {
    my ($block) = @_;

    my $main = _section_text($block, 'main_config');
    my $http = _section_text($block, 'http_config');
    my $config = _section_text($block, 'config');
    my $level = _get($block, 'log_level') // $LogLevel;

    my @modules = map { File::Spec->rel2abs($_) }
        split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');

    my $conf = "# written by Test::Nginx::Socket (local subset) for $0\n"
        . "# block: " . $block->name . "\n\n";
    $conf .= "load_module $_;\n" for @modules;
    $conf .= "\ndaemon off;\n";
    if ($MasterProcessEnabled) {
        $conf .= "master_process on;\nworker_processes $Workers;\n";
        $conf .= "user root root;\n" if $> == 0;
    }
    else {
        $conf .= "master_process off;\nworker_processes 1;\n";
    }
    $conf .= "pid logs/nginx.pid;\n";
    $conf .= "error_log logs/error.log $level;\n";
    $conf .= "env $_;\n" for @EnvToNginx;
    $conf .= "env ASAN_OPTIONS;\n" if $ENV{ASAN_OPTIONS};

    $conf .= <<"END";

# main_config
$main
# end of main_config

events {
    worker_connections 64;
}

http {
    access_log off;

    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    # http_config
$http
    # end of http_config

    server {
        listen 127.0.0.1:$ServerPort;
        server_name $ServerName;

        # config
$config
        # end of config
    }
}
END

    my $file = "$ServRoot/conf/nginx.conf";
    open my $fh, '>', $file or die "$file: $!\n";
    print $fh $conf;
    close $fh or die "$file: $!\n";
}

sub _write_user_files {
    my ($block) = @_;

    remove_tree($HtmlDir);
    make_path($HtmlDir);

    my $spec = _get($block, 'user_files');
    return unless defined $spec;

    my @files;
    if (ref $spec eq 'ARRAY') {
        @files = map { [@$_] } @$spec;
    }
    else {
        my @parts = split /^>>>[ \t]+(\S+)(?:[ \t]+(\d+))?[ \t]*\n/m, $spec;
        shift @parts;    # whatever precedes the first ">>>"
        while (@parts) {
            my ($file, $mtime, $content) = splice @parts, 0, 3;
            push @files, [$file, $content // '', $mtime];
        }
    }

    for my $f (@files) {
        my ($file, $content, $mtime) = @$f;
        die "--- user_files: bad file name '$file'\n"
            if $file =~ m{(?:^|/)\.\.(?:/|$)} || $file =~ m{^/};
        my $path = "$HtmlDir/$file";
        (my $dir = $path) =~ s{/[^/]*$}{};
        make_path($dir);
        open my $fh, '>', $path or die "$path: $!\n";
        print $fh $content;
        close $fh or die "$path: $!\n";
        utime $mtime, $mtime, $path if defined $mtime;
    }
}

# ---------------------------------------------------------------------------
# starting and stopping nginx

sub _error_log_file  { "$ServRoot/logs/error.log" }
sub _stderr_log_file { "$ServRoot/logs/startup-stderr.log" }

sub _nginx_has_e_option {
    return $NGINX_HAS_E_OPTION if defined $NGINX_HAS_E_OPTION;
    my $out = `"$NginxBinary" -V 2>&1`;
    my ($maj, $min, $pat) = ($out // '') =~ m{nginx/(\d+)\.(\d+)\.(\d+)};
    $NGINX_HAS_E_OPTION = defined $maj
        && sprintf('%03d%03d%03d', $maj, $min, $pat) ge '001019005' ? 1 : 0;
    return $NGINX_HAS_E_OPTION;
}

sub _nginx_command {
    my @cmd = ($NginxBinary, '-p', "$ServRoot/", '-c', 'conf/nginx.conf');
    # early messages into our error log too, whatever the binary's default
    push @cmd, '-e', 'logs/error.log' if _nginx_has_e_option();
    if ($UseValgrind) {
        unshift @cmd, 'valgrind', '-q', '--leak-check=full',
            '--show-leak-kinds=definite', '--num-callers=30',
            "--log-file=$ServRoot/logs/valgrind.log";
    }
    return @cmd;
}

# Starts nginx for a block, retrying on another port when ours was taken
# meanwhile (only when the port was picked by us).
sub _start_for_block {
    my ($block, $t, $must_die) = @_;

    die "nginx binary '$NginxBinary' not found or not executable"
        . " (set TEST_NGINX_BINARY)\n" unless -x $NginxBinary;

    _write_user_files($block);

    my $result;
    for my $attempt (1 .. 5) {
        _write_config($block);
        $result = _start_nginx($t, $must_die);
        last if $result->{running} || $PortFixed;
        my $stderr = join '', @{ $t->{startup_stderr} || [] },
            @{ _read_new_log($t) };
        last unless $stderr =~ /bind\(\) to 127\.0\.0\.1:$ServerPort failed.*Address already in use/;
        $ServerPort = _pick_port($ServerPort);
        _export_env();
    }
    return $result;
}

sub _start_nginx {
    my ($t, $must_die) = @_;

    my $log = _error_log_file();
    my $pidfile = "$ServRoot/logs/nginx.pid";
    unlink $pidfile;

    # a marker line, so that a kept error.log shows where each block starts
    if (open my $fh, '>>', $log) {
        print $fh "### runner: $t->{name}\n";
        close $fh;
    }
    $t->{log_offset} = -s $log || 0;
    $t->{startup_stderr} = [];

    my $stderr_file = _stderr_log_file();
    open my $err, '>', $stderr_file or die "$stderr_file: $!\n";

    my @cmd = _nginx_command();
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>&', $err;
        open STDERR, '>&', $err;
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);
    }
    close $err;
    $RUNNING = { pid => $pid };

    my $deadline = time + ($UseValgrind ? 60 : 10);
    while (time < $deadline) {
        my $r = waitpid $pid, WNOHANG;
        if ($r == $pid) {
            my $status = $?;
            undef $RUNNING;
            $t->{startup_stderr} = _read_lines($stderr_file);
            my $how = $status & 127 ? 'was killed by signal ' . ($status & 127)
                : 'exited with status ' . ($status >> 8);
            return { running => 0, reason => "nginx $how" };
        }
        # nginx writes its pid file once its sockets listen; no test
        # connection, which would show in its log
        if (_pid_file_is($pidfile, $pid)) {
            $t->{startup_stderr} = _read_lines($stderr_file);
            return { running => 1 };
        }
        sleep 0.01;
    }

    _stop_nginx($t);
    $t->{startup_stderr} = _read_lines($stderr_file);
    return { running => 0,
             reason => 'nginx did not accept connections in time' };
}

sub _pid_file_is {
    my ($file, $pid) = @_;
    open my $fh, '<', $file or return 0;
    my $content = <$fh> // '';
    close $fh;
    return $content =~ /^\s*(\d+)/ && $1 == $pid;
}

# Stops the nginx of the current block, if any: SIGQUIT, then SIGTERM,
# then SIGKILL to its whole process group.
sub _stop_nginx {
    my ($t) = @_;
    return unless $RUNNING;
    my $pid = $RUNNING->{pid};
    my $grace = $UseValgrind ? 30 : 5;

    my $exited = 0;
    SIGNAL: for my $sig (['QUIT', $grace], ['TERM', 2], ['KILL', 2]) {
        my ($name, $wait) = @$sig;
        kill $name, $pid;
        my $deadline = time + $wait;
        while (time < $deadline) {
            my $r = waitpid $pid, WNOHANG;
            if ($r == $pid || $r == -1) {
                $exited = 1;
                last SIGNAL;
            }
            sleep 0.01;
        }
        if ($t && $name ne 'KILL') {
            Test::More::diag("$t->{name}: nginx (pid $pid) ignored SIG$name");
        }
    }
    waitpid $pid, 0 unless $exited;
    # leftover workers (master_on) are in the master's process group
    kill 'KILL', -$pid if $MasterProcessEnabled;
    undef $RUNNING;
}

sub _report_valgrind {
    my ($t) = @_;
    my $file = "$ServRoot/logs/valgrind.log";
    my $lines = _read_lines($file);
    unlink $file;
    return unless grep { !/^==\d+==\s*$/ } @$lines;
    Test::More::diag("$t->{name}: valgrind:\n" . join '', @$lines);
}

# Stops nginx and removes our temporary server root; at the end of the
# test file, and when it is interrupted.
sub _cleanup {
    return unless $$ == $PARENT_PID;
    _stop_nginx();
    if ($OWN_SERVROOT && $ServRoot && -d $ServRoot) {
        if ($ENV{TEST_NGINX_NO_CLEAN}) {
            print STDERR "# Test::Nginx::Socket: server root kept in"
                . " $ServRoot\n";
        }
        else {
            remove_tree($ServRoot);
        }
        $OWN_SERVROOT = 0;
    }
}

END {
    my $status = $?;
    _cleanup();
    # a suite that planned nothing and did not die: count what ran
    if ($$ == $PARENT_PID && $status == 0) {
        my $tb = Test::More->builder;
        $tb->done_testing if !$tb->has_plan && $tb->current_test > 0;
    }
    $? = $status;
}

for my $sig (qw(INT TERM HUP PIPE)) {
    $SIG{$sig} = sub {
        _cleanup();
        $SIG{$sig} = 'DEFAULT';
        kill $sig, $$;
    };
}

# ---------------------------------------------------------------------------
# the HTTP client

sub _parse_timeout {
    my ($value) = @_;
    return $DefaultTimeout unless defined $value && length $value;
    return $1 / 1000 if $value =~ /^\s*(\d+(?:\.\d+)?)\s*ms\s*$/;
    return $1 if $value =~ /^\s*(\d+(?:\.\d+)?)\s*s?\s*$/;
    die "--- timeout: cannot understand '$value'\n";
}

sub _build_request {
    my ($block) = @_;

    if (defined(my $raw = _get($block, 'raw_request'))) {
        die "--- raw_request: array values are not supported\n" if ref $raw;
        $raw = _expand_env($raw, '--- raw_request');
        my ($method) = $raw =~ /^\s*(\S+)/;
        return ($raw, $method // 'GET');
    }

    my $request = _get($block, 'request');
    die "no '--- request' nor '--- raw_request' section\n"
        unless defined $request;
    die "--- request: only strings or an array of strings\n"
        if ref $request;
    $request = _expand_env($request, '--- request');

    # leading blank and comment lines are not part of the request
    $request =~ s/\A(?:[ \t]*(?:#[^\n]*)?\n)+//;
    my ($line, $body) = split /\n/, $request, 2;
    $line //= '';
    $line =~ s/\r$//;
    my ($method, $uri, $proto) =
        $line =~ m{^\s*(\S+)\s+(\S+)(?:\s+(HTTP/\d\.\d))?\s*$}
        or die "--- request: cannot parse request line '$line'\n";
    $proto //= 'HTTP/1.1';
    if (defined $body) {
        $body =~ s/\n\z//;
    }
    else {
        $body = '';
    }

    my @headers;
    my $more = _get($block, 'more_headers');
    if (defined $more) {
        die "--- more_headers: array values are not supported\n" if ref $more;
        $more = _expand_env($more, '--- more_headers');
        for my $h (split /\n/, $more) {
            $h =~ s/\r$//;
            next unless $h =~ /\S/;
            $h =~ /^\s*([^:\s]+)\s*:\s?(.*)$/
                or die "--- more_headers: cannot parse '$h'\n";
            push @headers, [$1, $2];
        }
    }
    my %has = map { lc $_->[0] => 1 } @headers;

    my $req = "$method $uri $proto\r\n";
    $req .= "Host: $ServerName\r\n" unless $has{host};
    $req .= "Connection: close\r\n" unless $has{connection};
    if ((length $body || $method =~ /^(?:POST|PUT|PATCH)$/)
        && !$has{'content-length'} && !$has{'transfer-encoding'})
    {
        $req .= 'Content-Length: ' . length($body) . "\r\n";
    }
    $req .= "$_->[0]: $_->[1]\r\n" for @headers;
    $req .= "\r\n" . $body;

    return ($req, $method);
}

sub _do_request {
    my ($block, $t) = @_;

    my $timeout = _parse_timeout(_get($block, 'timeout'));
    my ($req, $method) = _build_request($block);

    my $deadline = time + $timeout;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $ServerPort,
        Proto    => 'tcp',
        Timeout  => $timeout,
    ) or return { error => "cannot connect to 127.0.0.1:$ServerPort: $@" };
    $sock->blocking(0);

    my $sel = IO::Select->new($sock);
    my ($buf, $error) = ('', undef);

    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $req) {
        my $left = $deadline - time;
        if ($left <= 0 || !$sel->can_write($left)) {
            $error = "timed out after ${timeout}s sending the request";
            last;
        }
        my $n = syswrite $sock, $req, length($req) - $off, $off;
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            last;   # the server may have answered and closed already
        }
        $off += $n;
    }

    while (!defined $error) {
        last if _response_complete($buf, $method);
        my $left = $deadline - time;
        if ($left <= 0 || !$sel->can_read($left)) {
            $error = "timed out after ${timeout}s reading the response";
            last;
        }
        my $n = sysread $sock, $buf, 65536, length $buf;
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            last if $! == ECONNRESET && length $buf;
            $error = "reading the response: $!";
            last;
        }
        last if $n == 0;
    }
    close $sock;

    my $res = _parse_response($buf, $method);
    if (defined $error) {
        $res->{error} = defined $res->{error} ? "$error; $res->{error}"
            : $error;
    }
    return $res;
}

# a response without the interim (1xx) responses before it
sub _skip_interim {
    my ($buf) = @_;
    1 while $buf =~ s{\AHTTP/\d\.\d[ \t]+1\d\d\b[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n}{};
    return $buf;
}

# whether $buf already holds a whole response (for keep-alive connections)
sub _response_complete {
    my ($buf, $method) = @_;
    $buf = _skip_interim($buf);
    my $end = index $buf, "\r\n\r\n";
    return 0 if $end < 0;
    my $head = substr $buf, 0, $end;
    my $body_len = length($buf) - $end - 4;
    my ($status) = $head =~ m{^HTTP/\d\.\d\s+(\d+)};
    return 0 unless defined $status;
    return 1 if $method eq 'HEAD' || $status =~ /^(?:1\d\d|204|304)$/;
    if ($head =~ /^Transfer-Encoding:[ \t]*chunked/mi) {
        return defined _decode_chunked(substr $buf, $end + 4) ? 1 : 0;
    }
    if ($head =~ /^Content-Length:[ \t]*(\d+)/mi) {
        return $body_len >= $1;
    }
    return 0;    # till EOF
}

# the decoded body of a complete chunked body, undef if incomplete
sub _decode_chunked {
    my ($data) = @_;
    my $body = '';
    while (1) {
        $data =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n// or return undef;
        my $size = hex $1;
        if ($size == 0) {
            # trailers up to an empty line
            return $data =~ /\A(?:[^\r\n]+\r\n)*\r\n/ ? $body : undef;
        }
        return undef if length $data < $size + 2;
        $body .= substr $data, 0, $size;
        $data = substr $data, $size;
        $data =~ s/\A\r\n// or return undef;
    }
}

sub _parse_response {
    my ($buf, $method) = @_;
    my $res = { raw => $buf, headers => [], hdr => {} };
    $buf = _skip_interim($buf);

    if (!length $buf) {
        $res->{error} = 'empty response';
        return $res;
    }
    my $end = index $buf, "\r\n\r\n";
    if ($end < 0) {
        $res->{error} = 'incomplete response header';
        return $res;
    }
    my ($status_line, @lines) = split /\r\n/, substr($buf, 0, $end);
    if ($status_line !~ m{^(HTTP/\d\.\d)\s+(\d{3})(?:\s+(.*))?$}) {
        $res->{error} = "bad status line '$status_line'";
        return $res;
    }
    @$res{qw(proto status reason)} = ($1, $2, $3 // '');
    for my $line (@lines) {
        my ($n, $v) = $line =~ /^([^:]+):[ \t]*(.*?)[ \t]*$/ or next;
        push @{ $res->{headers} }, [$n, $v];
        push @{ $res->{hdr}{lc $n} }, $v;
    }

    my $body = substr $buf, $end + 4;
    if ($method eq 'HEAD' || $res->{status} =~ /^(?:1\d\d|204|304)$/) {
        $body = '';
    }
    elsif ((_header($res, 'Transfer-Encoding') // '') =~ /chunked/i) {
        my $decoded = _decode_chunked($body);
        if (defined $decoded) {
            $body = $decoded;
        }
        else {
            $res->{error} = 'truncated or bad chunked body';
        }
    }
    elsif (defined(my $len = _header($res, 'Content-Length'))) {
        if (length $body < $len) {
            $res->{error} = "truncated body: " . length($body)
                . " of $len bytes";
        }
        else {
            $body = substr $body, 0, $len;
        }
    }
    $res->{body} = $body;
    return $res;
}

sub _header {
    my ($res, $name) = @_;
    my $values = $res->{hdr}{lc $name} or return undef;
    return join ', ', @$values;
}

# ---------------------------------------------------------------------------
# response checks

sub _no_response {
    my ($t, $what, $res) = @_;
    return _check($t, 0, $what, "no response: $res->{error}");
}

sub _check_response {
    my ($block, $t, $res) = @_;

    my $have = defined $res->{status};
    my $err = defined $res->{error} ? "($res->{error})" : undef;

    # status: also fails when the response came incomplete or late
    my $like = _get($block, 'error_code_like');
    my $expected_code = _get($block, 'error_code') // 200;
    if (!$have) {
        _no_response($t, 'status code ok', $res);
    }
    else {
        my ($ok, $why);
        if (defined $like) {
            my $re = ref $like eq 'Regexp' ? $like : qr/^(?:$like)$/;
            $ok = $res->{status} =~ $re ? 1 : 0;
            $why = "got status $res->{status}, expected one like $re";
        }
        else {
            $ok = $res->{status} eq $expected_code ? 1 : 0;
            $why = "got status $res->{status}, expected $expected_code";
        }
        _check($t, $ok && !defined $res->{error}, 'status code ok',
            $ok ? undef : $why, $err);
    }

    _check_headers($block, $t, $res);

    # body
    my $body = $res->{body};
    if (defined $body) {
        $body = _apply_body_filters(_get($block, 'response_body_filters'), $body);
    }

    my $expected = _get($block, 'response_body');
    if (defined $expected) {
        my $what = 'response_body - response is expected';
        if (!defined $body) {
            _no_response($t, $what, $res);
        }
        elsif (ref $expected eq 'Regexp') {
            _check($t, $body =~ $expected ? 1 : 0, $what,
                "body does not match $expected:\n" . _show($body), $err);
        }
        elsif (ref $expected) {
            die "--- response_body: array values are not supported\n";
        }
        elsif ($body eq $expected) {
            _check($t, 1, $what);
        }
        else {
            _check($t, 0, $what, _body_diff($expected, $body), $err);
        }
    }

    for my $spec (['response_body_like', 1], ['response_body_unlike', 0]) {
        my ($section, $want) = @$spec;
        my $pat = _get($block, $section);
        next unless defined $pat;
        my $re = ref $pat eq 'Regexp' ? $pat : qr/$pat/s;
        my $what = "$section - response is expected";
        if (!defined $body) {
            _no_response($t, $what, $res);
            next;
        }
        my $matches = $body =~ $re ? 1 : 0;
        _check($t, $matches == $want, $what,
            ($want ? 'body does not match' : 'body matches')
            . " $re:\n" . _show($body), $err);
    }
}

sub _header_specs {
    my ($spec, $section) = @_;
    my @lines;
    if (ref $spec eq 'HASH') {
        return map { [$_, $spec->{$_}] } sort keys %$spec;
    }
    @lines = ref $spec eq 'ARRAY' ? @$spec : split /\n/, $spec;
    my @out;
    for my $line (@lines) {
        $line =~ s/\r$//;
        next unless $line =~ /\S/;
        if ($line =~ /^\s*!\s*([^:\s]+)\s*$/) {
            push @out, [$1, undef, 'absent'];
        }
        elsif ($line =~ /^\s*([^:\s]+)\s*:\s*(.*?)\s*$/) {
            push @out, [$1, $2];
        }
        else {
            die "--- $section: cannot parse '$line'\n";
        }
    }
    return @out;
}

sub _check_headers {
    my ($block, $t, $res) = @_;
    my $have = defined $res->{status};

    if (defined(my $spec = _get($block, 'response_headers'))) {
        for my $h (_header_specs($spec, 'response_headers')) {
            my ($name, $expected, $absent) = @$h;
            my $got = $have ? _header($res, $name) : undef;
            my $what = $absent ? "header $name not present"
                : $expected eq '' ? "header $name absent or empty"
                : "header $name ok";
            if (!$have) {
                _no_response($t, $what, $res);
            }
            elsif ($absent) {
                _check($t, !defined $got, $what,
                    "got header $name: " . ($got // ''));
            }
            elsif ($expected eq '') {
                _check($t, !defined $got || $got eq '', $what,
                    "got header $name: " . ($got // ''));
            }
            else {
                _check($t, defined $got && $got eq $expected, $what,
                    defined $got ? "got:      '$got'\nexpected: '$expected'"
                        : "no header $name; expected '$expected'",
                    _show_headers($res));
            }
        }
    }

    if (defined(my $spec = _get($block, 'response_headers_like'))) {
        for my $h (_header_specs($spec, 'response_headers_like')) {
            my ($name, $pat, $absent) = @$h;
            my $what = $absent ? "header $name not present"
                : "header $name like ok";
            if (!$have) {
                _no_response($t, $what, $res);
                next;
            }
            my $got = _header($res, $name);
            if ($absent) {
                _check($t, !defined $got, $what,
                    "got header $name: " . ($got // ''));
                next;
            }
            my $re = ref $pat eq 'Regexp' ? $pat : qr/^(?:$pat)$/;
            _check($t, defined $got && $got =~ $re ? 1 : 0, $what,
                defined $got ? "got:      '$got'\nexpected like: $re"
                    : "no header $name; expected like $re",
                _show_headers($res));
        }
    }
}

sub _show_headers {
    my ($res) = @_;
    return 'response headers:' . join '',
        map { "\n    $_->[0]: $_->[1]" } @{ $res->{headers} };
}

sub _apply_body_filters {
    my ($filters, $body) = @_;
    return $body unless defined $filters;
    my @list = ref $filters eq 'ARRAY' ? @$filters
        : ref $filters eq 'CODE' ? ($filters)
        : split ' ', $filters;
    for my $f (@list) {
        if (ref $f eq 'CODE') {
            $body = $f->($body);
        }
        elsif ($f eq 'uc') {
            $body = uc $body;
        }
        elsif ($f eq 'lc') {
            $body = lc $body;
        }
        elsif (my $code = main->can($f)) {
            $body = $code->($body);
        }
        else {
            die "--- response_body_filters: unknown filter '$f'\n";
        }
    }
    return $body;
}

sub _show {
    my ($s) = @_;
    return '(undef)' unless defined $s;
    return "    got: '" . _clip($s) . "'";
}

sub _body_diff {
    my ($expected, $got) = @_;
    my $text = "got:      '" . _clip($got) . "'\n"
        . "expected: '" . _clip($expected) . "'";
    if ($expected =~ /\n./s || $got =~ /\n./s) {
        require Text::Diff;
        $text .= "\ndiff (- expected, + got):\n" . Text::Diff::diff(
            \$expected, \$got, { STYLE => 'Unified' });
    }
    return $text;
}

# long strings are cut in messages, unless no_long_string()
sub _clip {
    my ($s) = @_;
    return $s if $NoLongString || length $s <= 4096;
    return substr($s, 0, 4096) . '... (' . length($s) . ' bytes)';
}

# ---------------------------------------------------------------------------
# error log checks

sub _read_lines {
    my ($file, $offset) = @_;
    open my $fh, '<', $file or return [];
    seek $fh, $offset, 0 if $offset;
    my @lines = <$fh>;
    close $fh;
    return \@lines;
}

sub _read_new_log {
    my ($t) = @_;
    return _read_lines(_error_log_file(), $t->{log_offset});
}

# The block's log: what nginx printed while starting, then the lines its
# error log got during the block, up to the one where nginx says it got our
# stop signal.  What it logs from there on (its shutdown) is the block's
# shutdown log.
my $STOP_SIGNAL_LINE = qr/\bsignal \d+ \(SIG(?:QUIT|TERM|KILL)\) received/;

sub _split_log {
    my ($t) = @_;
    my @lines = map { my $l = $_; chomp $l; $l } @{ _read_new_log($t) };
    my @shutdown;
    for my $i (0 .. $#lines) {
        if ($lines[$i] =~ $STOP_SIGNAL_LINE) {
            @shutdown = splice @lines, $i;
            last;
        }
    }
    my @startup = map { my $l = $_; chomp $l; $l }
        @{ $t->{startup_stderr} || [] };
    return ([@startup, @lines], \@shutdown);
}



sub _patterns {
    my ($value) = @_;
    return () unless defined $value;
    my @items = ref $value eq 'ARRAY' ? @$value : ($value);
    my @out;
    for my $item (@items) {
        if (ref $item eq 'Regexp') {
            push @out, $item;
        }
        elsif (ref $item) {
            die "error_log: unsupported pattern type " . ref($item) . "\n";
        }
        else {
            push @out, grep { length } split /\n/, $item;
        }
    }
    return @out;
}

sub _line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ $pat : index($line, $pat) >= 0;
}

sub _check_logs {
    my ($block, $t) = @_;

    my $want = _get($block, 'error_log');
    my $dont = _get($block, 'no_error_log');
    my $grep = _get($block, 'grep_error_log');
    my $want_shutdown = _get($block, 'shutdown_error_log');
    my $dont_shutdown = _get($block, 'no_shutdown_error_log');
    return unless grep { defined }
        $want, $dont, $grep, $want_shutdown, $dont_shutdown;

    my ($lines, $shutdown) = _split_log($t);

    _check_log_patterns($t, $lines, $want, $dont, 'error.log');
    _check_log_patterns($t, $shutdown, $want_shutdown, $dont_shutdown,
        'the shutdown log');
    _check_grep_log($block, $t, $lines, $grep) if defined $grep;
}

sub _check_log_patterns {
    my ($t, $lines, $want, $dont, $log_name) = @_;

    for my $pat (_patterns($want)) {
        my $shown = ref $pat ? "$pat" : qq{"$pat"};
        my $found = grep { _line_matches($_, $pat) } @$lines;
        _check($t, $found, "pattern $shown should match a line in $log_name",
            "no line of $log_name matches $shown");
    }

    for my $pat (_patterns($dont)) {
        my $shown = ref $pat ? "$pat" : qq{"$pat"};
        my @bad = grep { _line_matches($_, $pat) } @$lines;
        splice @bad, 5 if @bad > 5;
        _check($t, !@bad,
            "pattern $shown should not match any line in $log_name",
            join "\n", "matching lines:", map { "    $_" } @bad);
    }
}

sub _check_grep_log {
    my ($block, $t, $lines, $grep) = @_;

    my $expected = _get($block, 'grep_error_log_out');
    die "--- grep_error_log needs a --- grep_error_log_out\n"
        unless defined $expected;

    # every match, each on a line of its own
    my $got = '';
    for my $line (@$lines) {
        if (ref $grep eq 'Regexp') {
            while ($line =~ /$grep/g) {
                $got .= "$&\n";
            }
        }
        else {
            for my $pat (_patterns($grep)) {
                $got .= "$pat\n" if index($line, $pat) >= 0;
            }
        }
    }

    my $what = 'grep_error_log_out';
    if (ref $expected eq 'Regexp') {
        _check($t, $got =~ $expected ? 1 : 0, $what,
            "grepped:\n$got\nexpected like $expected");
    }
    else {
        _check($t, $got eq $expected, $what, _body_diff($expected, $got));
    }
}

# After a failure: what nginx printed while starting and the log entries
# of the block at level warn or worse (an entry's continuation lines, as
# in debug dumps of headers, go with it).
sub _diag_logs {
    my ($t) = @_;
    my ($lines, $shutdown) = _split_log($t);
    my (@shown, $keep);
    for my $line (@$lines, @$shutdown) {
        next if $line =~ /^### runner:/;
        if ($line =~ m{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\]}) {
            $keep = $1 =~ /^(?:warn|error|crit|alert|emerg)$/;
        }
        elsif ($line =~ /^nginx: \[/) {
            $keep = 1;     # printed on stderr while starting
        }
        push @shown, "$line\n" if $keep;
    }
    return unless @shown;
    splice @shown, 0, @shown - 30 if @shown > 30;
    Test::More::diag("$t->{name}: nginx said:\n"
        . join '', map { "    $_" } @shown);
}

1;
