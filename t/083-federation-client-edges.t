# The federation client against a raw HTTP server that answers in ways a
# well-behaved one would not, each once a defect found in review: a POST's
# body, interim 1xx answers (together with the final one, or apart), bytes
# after a response without a body, and a server that does not accept.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep);

use MatrixNginx;
use MatrixTest;

plan skip_all => 'MATRIX_PGTEST_MODULE not built'
    unless $ENV{MATRIX_PGTEST_MODULE} && -f $ENV{MATRIX_PGTEST_MODULE};

$ENV{TEST_NGINX_LOAD_MODULES} .= " $ENV{MATRIX_PGTEST_MODULE}";

sub ok200 {
    my ($body) = @_;
    return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
           . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

# what the raw server says per path; a code ref may write in parts
my %answers = (
    '/post'  => sub { ok200('{"hello":"x"}') },
    '/early' => sub {
        "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        . ok200('{"final":true}')
    },
    '/early-split' => sub {
        my ($s) = @_;
        print $s "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        sleep 0.05;
        ok200('{"stale":1}')
    },
    '/fresh' => sub { ok200('{"fresh":1}') },
    '/nocontent-extra' => sub { "HTTP/1.1 204 No Content\r\n\r\nGARBAGE" },
    '/status2000' => sub { "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n" },
    '/control' => sub { "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\n{}" },
);

my $listen = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1',
                                   LocalPort => 0, ReuseAddr => 1)
    or die "listen: $!";
my $port = $listen->sockport;

my $server = fork // die "fork: $!";
if ($server == 0) {
    while (my $c = $listen->accept) {
        next if fork;                       # a process per connection
        $c->autoflush(1);
        while (defined(my $line = <$c>)) {
            my ($method, $path) = $line =~ /^(\S+) (\S+)/ or last;
            my $len = 0;
            while (defined(my $h = <$c>)) {
                last if $h eq "\r\n";
                $len = $1 if $h =~ /^Content-Length: (\d+)/i;
            }
            read $c, my $body, $len if $len;
            my $a = $answers{$path} // sub { ok200('{"path":"unknown"}') };
            print $c $a->($c);
        }
        exit 0;
    }
    exit 0;
}

# a listener that never accepts: its backlog full, connects hang
my $deaf = IO::Socket::INET->new(Listen => 0, LocalAddr => '127.0.0.1',
                                 LocalPort => 0) or die "listen: $!";
my @fill = map { IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $deaf->sockport,
                                       Blocking => 0) } 1 .. 8;

my $ngx = MatrixNginx->start(http => <<"EOF",
    matrix_server_name example.org;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_federation_allow_ip 127.0.0.0/8;
EOF
    server => '        location /fetch { matrix_httptest; }');

sub fetch {
    my ($q, $p) = @_;
    my (undef, undef, $body) = $ngx->get("/fetch?host=127.0.0.1&port="
                                         . ($p // $port) . "&tls=0&$q");
    my ($head, $resp) = split /\n\n/, $body, 2;
    my ($status) = $head =~ /^status: (\d+)/;
    return ($status, $resp, $head);
}

my ($status, $body) = fetch('method=POST&uri=/post&body=%7B%7D');
is $status, 200, 'a POST';
is $body, '{"hello":"x"}', 'has its response body';

($status, $body) = fetch('uri=/fresh');
is $body, '{"fresh":1}', 'and the next request on the connection its own';

($status, $body) = fetch('uri=/early');
is $status, 200, 'an interim 103 before the answer is read past';
is $body, '{"final":true}', 'the final answer is the one given';

($status, $body) = fetch('uri=/early-split');
is $status, 200, 'also when the final answer comes later';
is $body, '{"stale":1}', 'with its body';

($status, $body) = fetch('uri=/fresh');
is $body, '{"fresh":1}', 'and no answer is handed to the wrong request';

($status, $body) = fetch('uri=/nocontent-extra');
is $status, 204, 'a 204 followed by stray bytes';
($status, $body) = fetch('uri=/fresh');
is $body, '{"fresh":1}', 'does not poison the next request';

(undef, undef, my $head) = fetch('uri=/status2000');
like $head, qr/^status: 0\nerror: .*bad status line/, 'a four-digit status is refused';

(undef, undef, $head) = fetch('uri=/control');
like $head, qr/^status: 0\nerror: .*control character/,
    'a control character in a header value is refused';

(undef, undef, $head) = fetch('uri=/x&timeout=12000', $deaf->sockport);
like $head, qr/^status: 0\nerror: .*(timed out|cannot connect)/,
    'a server that never accepts: the connect times out';

$ngx->stop;
unlike $ngx->error_log, qr/\[(alert|crit|emerg)\]/, 'no alerts';

kill 'TERM', $server;
waitpid $server, 0;

done_testing;
