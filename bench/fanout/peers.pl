#!/usr/bin/perl
# bench/fanout/peers.pl: the other side of bench/fanout, from the tests'
# helpers: the fake homeserver remote.test (t/tools/fake_hs.py over TLS,
# t/lib/MatrixFakeHS.pm: it makes the rooms by joining them), a
# certificate from its CA for "*.fan.test" (the receivers), and a DNS
# server (t/lib/MatrixDNS.pm) that says remote.test and d0.fan.test ..
# dDESTS.fan.test are 127.0.0.1, with SRV records (_matrix-fed._tcp)
# to the fake's port and to RECEIVER_PORT.  Once both serve it writes
# OUT (shell assignments: DNS, CA, CONTROL, CERT, KEY) and stays up until
# SIGTERM; both children stop with it (and by themselves once it is gone).
#
#   perl -It/lib bench/fanout/peers.pl OUT DESTS RECEIVER_PORT

use strict;
use warnings;

use MatrixFakeHS;
use MatrixDNS;

my ($out, $dests, $rport) = @ARGV;
$rport += 0;    # a number in the DNS table, not a string
die "usage: peers.pl OUT DESTS RECEIVER_PORT\n" unless defined $rport;

die "no python3-aiohttp/signedjson/canonicaljson\n" unless MatrixFakeHS::available();
die "no python3-dnslib\n" unless MatrixDNS::available();

my $fake = MatrixFakeHS->start(names => ['remote.test']);
my ($cert, $key) = $fake->cert('*.fan.test');
my %records = (
    'remote.test' => { A => '127.0.0.1' },
    '_matrix-fed._tcp.remote.test' => { SRV => [[10, 5, $fake->port, 'remote.test']] },
);
for my $i (0 .. $dests) {
    $records{"d$i.fan.test"} = { A => '127.0.0.1' };
    $records{"_matrix-fed._tcp.d$i.fan.test"} = { SRV => [[10, 5, $rport, "d$i.fan.test"]] };
}
my $dns = MatrixDNS->start(records => \%records);

sub sh_quote { my ($s) = @_; $s =~ s/'/'\\''/g; "'$s'" }

open my $fh, '>', "$out.tmp" or die "$out.tmp: $!";
print $fh "DNS=", sh_quote($dns->resolver), "\n",
          "CA=", sh_quote($fake->ca_file), "\n",
          "CERT=", sh_quote($cert), "\n",
          "KEY=", sh_quote($key), "\n",
          "CONTROL=", sh_quote($fake->control_url), "\n";
close $fh or die "$out.tmp: $!";
rename "$out.tmp", $out or die "rename $out: $!";

# exit (not death by signal) so the children are stopped and the
# temporary directories removed
$SIG{TERM} = $SIG{INT} = sub { exit 0 };
sleep 3600 while 1;
