package MatrixEventPy;

# The independent event implementation of the tests, t/tools/mx_event.py
# (Debian's python3-signedjson and python3-canonicaljson, written from
# the spec), as one long-lived process.
#
#   my $py = MatrixEventPy->start;
#   my $red = $py->redact(\%event, '10');
#   my $id = $py->event_id(\%event, '10');         # "$..."
#   my $h = $py->content_hash(\%event);            # unpadded base64
#   my $signed = $py->sign(\%event, 'a.example', "ed25519 1 SEED", '10');
#   my $r = $py->check(\%event, '10', {'a.example' => {'ed25519:1' => $b64}});
#       # {event_id, hash_ok, signatures_ok, redacted, required_servers,
#       #  errors => [...], room_id (v12 create events)}
#   my $errors = $py->verify(\%event, '10', \%keys, [servers]);
#   my $any = $py->call(OP, field => value, ...);  # any op of "serve"
#
# A call dies with mx_event.py's message when it fails.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);

use MatrixJSONLines;

our @ISA = ('MatrixJSONLines');

my $TOOL = abs_path(dirname(__FILE__) . '/../tools') . '/mx_event.py';

sub available {
    return system('/usr/bin/python3', '-c',
                  'import signedjson.sign, canonicaljson') == 0;
}

sub start {
    my ($class) = @_;
    return $class->SUPER::start(['/usr/bin/python3', $TOOL, 'serve'],
                                what => 'mx_event.py');
}

sub call {
    my ($self, $op, %args) = @_;

    my $a = $self->ask({ %args, op => $op });
    die "mx_event.py $op: $a->{error}\n" if exists $a->{error};

    return $a->{result};
}

sub redact { $_[0]->call('redact', event => $_[1], room_version => $_[2]) }
sub event_id { $_[0]->call('event_id', event => $_[1], room_version => $_[2]) }
sub content_hash { $_[0]->call('content_hash', event => $_[1]) }

sub sign {
    my ($self, $event, $server, $key, $rv) = @_;
    return $self->call('sign', event => $event, server => $server,
                       key => $key, room_version => $rv);
}

sub check {
    my ($self, $event, $rv, $keys) = @_;
    return $self->call('check', event => $event, room_version => $rv,
                       keys => $keys || {});
}

sub verify {
    my ($self, $event, $rv, $keys, $servers) = @_;
    return $self->call('verify', event => $event, room_version => $rv,
                       keys => $keys || {},
                       $servers ? (servers => $servers) : ());
}

1;
