# "nginx -t" as an operator runs it: the exit status and what it prints
# for a good configuration and for each kind of broken key file.

use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);
use IPC::Run ();

use MatrixTest;

my $nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $module = (split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '')[0];

plan skip_all => 'TEST_NGINX_LOAD_MODULES is not set' unless $module;

my $dir = tempdir('matrix-nginx-t-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$dir/logs";

sub nginx_t {
    my ($http) = @_;

    open my $fh, '>', "$dir/nginx.conf" or die $!;
    print $fh <<CONF;
load_module $module;
error_log $dir/logs/error.log;
pid $dir/nginx.pid;
events {}
http {
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$http
    server {
        listen 127.0.0.1:1;
        location /_matrix/ { matrix; }
    }
}
CONF
    close $fh;

    my ($out, $err) = ('', '');
    IPC::Run::run([$nginx, '-t', '-p', $dir, '-c', "$dir/nginx.conf"],
                  \undef, \$out, \$err);

    note $out . $err;

    return ($? >> 8, $out . $err);
}

my ($rc, $said);
my $pid = qr/\d+#\d+:/;

($rc, $said) = nginx_t(<<CONF);
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
CONF
is $rc, 0, 'a good configuration passes';
like $said, qr/test is successful/, '... and nginx says so';
unlike $said, qr/\[(?:warn|emerg)\]/, '... without a warning';

($rc, $said) = nginx_t(<<CONF);
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_NO_KEY};
CONF
isnt $rc, 0, 'a missing key file fails';
like $said, qr/\[emerg\] $pid matrix_signing_key: cannot open "\Q$ENV{TEST_NGINX_MATRIX_NO_KEY}\E" \(2: No such file or directory\)/,
    '... naming the file and the reason';
like $said, qr/in \Q$dir\E\/nginx\.conf:\d+/, '... and the line of the directive';
like $said, qr/test failed/, '... and nginx says the test failed';

($rc, $said) = nginx_t(<<CONF);
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_BAD_SEED};
CONF
isnt $rc, 0, 'a malformed key file fails';
like $said, qr/\[emerg\] $pid matrix_signing_key: "\Q$ENV{TEST_NGINX_MATRIX_BAD_SEED}\E": line 2: /,
    '... naming the file and the line in it';

($rc, $said) = nginx_t(<<CONF);
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_OPEN_KEY};
CONF
is $rc, 0, 'a key file readable by others passes';
like $said, qr/\[warn\] $pid matrix_signing_key: "\Q$ENV{TEST_NGINX_MATRIX_OPEN_KEY}\E" is accessible by other users/,
    '... with a warning naming the file';

my $unreadable = "$dir/unreadable.key";
{
    open my $fh, '>', $unreadable or die $!;
    print $fh "ed25519 1 $MatrixTest::SPEC_SEED\n";
    close $fh;
    chmod 0000, $unreadable;
}

SKIP: {
    skip 'root reads any file', 2 if $> == 0;
    ($rc, $said) = nginx_t(<<CONF);
    matrix_server_name example.org;
    matrix_signing_key $unreadable;
CONF
    isnt $rc, 0, 'an unreadable key file fails';
    like $said, qr/Permission denied/, '... saying why';
}

($rc, $said) = nginx_t(<<CONF);
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
CONF
isnt $rc, 0, '"matrix" without a server name fails';
like $said, qr/\[emerg\] $pid "matrix" in \Q$dir\E\/nginx\.conf:\d+ needs "matrix_server_name"/,
    '... pointing at the location';

done_testing();
