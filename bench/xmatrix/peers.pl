#!/usr/bin/perl
# bench/xmatrix/peers.pl: the other side of the bench, from the tests'
# helpers: the fake homeserver remote.test (t/tools/fake_hs.py over TLS,
# via t/lib/MatrixFakeHS.pm) and a DNS server (t/lib/MatrixDNS.pm) that
# says remote.test is 127.0.0.1 and its federation (SRV
# _matrix-fed._tcp.remote.test) is the fake's port.  Once both serve it
# writes OUT (shell assignments: DNS, CA, AUTH, CONTROL) and stays up until
# SIGTERM; both children stop with it (and by themselves once it is gone).
#
# With MANY (a file of URIs, one per line), it also writes MANY.auth: the
# header for each of them, one per line, in the same order.
#
#   perl -It/lib bench/xmatrix/peers.pl OUT METHOD URI DESTINATION [MANY]

use strict;
use warnings;

use MatrixFakeHS;
use MatrixDNS;

my ($out, $method, $uri, $destination, $many) = @ARGV;
die "usage: peers.pl OUT METHOD URI DESTINATION\n" unless defined $destination;

die "no python3-aiohttp/signedjson/canonicaljson\n" unless MatrixFakeHS::available();
die "no python3-dnslib\n" unless MatrixDNS::available();

my $fake = MatrixFakeHS->start(names => ['remote.test']);
my $dns = MatrixDNS->start(records => {
    'remote.test' => { A => '127.0.0.1' },
    '_matrix-fed._tcp.remote.test' => { SRV => [[10, 5, $fake->port, 'remote.test']] },
});

# X-Matrix signs method, URI, origin and destination (and the body, none
# here): no nonce, no timestamp, so this one header is valid for every
# request of the run
my $auth = $fake->x_matrix('remote.test', method => $method, uri => $uri,
                           destination => $destination);

if (defined $many) {
    open my $in, '<', $many or die "$many: $!";
    chomp(my @uris = <$in>);
    my @headers = $fake->x_matrix_many('remote.test', \@uris,
                                       method => $method,
                                       destination => $destination);
    die "signed " . @headers . " of " . @uris . " URIs\n" unless @headers == @uris;
    open my $o, '>', "$many.auth" or die "$many.auth: $!";
    print $o "$_\n" for @headers;
    close $o or die "$many.auth: $!";
}

sub sh_quote { my ($s) = @_; $s =~ s/'/'\\''/g; "'$s'" }

open my $fh, '>', "$out.tmp" or die "$out.tmp: $!";
print $fh "DNS=", sh_quote($dns->resolver), "\n",
          "CA=", sh_quote($fake->ca_file), "\n",
          "AUTH=", sh_quote($auth), "\n",
          "CONTROL=", sh_quote($fake->control_url), "\n";
close $fh or die "$out.tmp: $!";
rename "$out.tmp", $out or die "rename $out: $!";

# exit (not death by signal) so the children are stopped and the
# temporary directories removed
$SIG{TERM} = $SIG{INT} = sub { exit 0 };
sleep 3600 while 1;
