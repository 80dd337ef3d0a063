#!/usr/bin/perl
# examples/demo-peer.pl: the demo's other Matrix server, from the tests'
# helpers (t/lib): the fake homeserver (t/tools/fake_hs.py over TLS on
# 127.0.0.1:PORT, its certificates from the demo's CA in TLS_DIR) playing
# the Matrix server "localhost:PORT" with the key in KEY_FILE,
# and a DNS server (t/lib/MatrixDNS.pm) that answers "localhost" and
# "*.localhost" with 127.0.0.1 and ::1 -- the demo's nginx has no other
# resolver, and the system's may not answer for localhost.
#
# Once both serve, it writes OUT (shell assignments: PEER_NAME,
# PEER_CONTROL, PEER_DNS) and stays up until SIGTERM; both children stop
# with it (and by themselves once it is gone).  examples/demo.sh starts
# it; examples/demo-visit.py drives the fake through PEER_CONTROL.
#
#   perl -It/lib examples/demo-peer.pl OUT TLS_DIR KEY_FILE PORT

use strict;
use warnings;

use MatrixFakeHS;
use MatrixDNS;

my ($out, $tls_dir, $key_file, $port) = @ARGV;
die "usage: demo-peer.pl OUT TLS_DIR KEY_FILE PORT\n" unless defined $port;

die "demo-peer: python3-aiohttp, python3-signedjson or python3-canonicaljson "
  . "is missing (make deps)\n" unless MatrixFakeHS::available();
die "demo-peer: python3-dnslib is missing (make deps)\n"
    unless MatrixDNS::available();

open my $kf, '<', $key_file or die "demo-peer: $key_file: $!\n";
my $key = do { local $/; <$kf> };
close $kf;

# the same name and key every time: the server that joined the room in an
# earlier run is this one, its events still verify
my $name = "localhost:$port";
my $fake = MatrixFakeHS->start(names => [$name], keys => { $name => $key },
                               tls_dir => $tls_dir, port => $port);

my $dns = MatrixDNS->start(records => {
    'localhost'   => { A => '127.0.0.1', AAAA => '::1' },
    '*.localhost' => { A => '127.0.0.1', AAAA => '::1' },
});

sub sh_quote { my ($s) = @_; $s =~ s/'/'\\''/g; "'$s'" }

open my $fh, '>', "$out.tmp" or die "demo-peer: $out.tmp: $!\n";
print $fh "PEER_NAME=", sh_quote($name), "\n",
          "PEER_CONTROL=", sh_quote($fake->control_url), "\n",
          "PEER_DNS=", sh_quote($dns->resolver), "\n";
close $fh or die "demo-peer: $out.tmp: $!\n";
rename "$out.tmp", $out or die "demo-peer: rename $out: $!\n";

# exit (not death by signal) so the children are stopped and the
# temporary directories removed
$SIG{TERM} = $SIG{INT} = sub { exit 0 };
$SIG{HUP} = "IGNORE";    # like the silo, it outlives the terminal
sleep 3600 while 1;
