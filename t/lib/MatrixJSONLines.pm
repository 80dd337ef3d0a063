package MatrixJSONLines;

# A long-lived helper process that answers one JSON line with one JSON
# line, in order (t/tools/spec_validate.js, t/tools/mx_event.py serve):
# one start per test file, then as many questions as wanted, cheaply.
#
#   my $p = MatrixJSONLines->start([cmd, args...], env => {NAME => VALUE},
#                                  what => 'spec_validate');
#   my $answer = $p->ask({...});    # the decoded answer; dies if none
#   $p->stop;                       # also when $p goes away

use strict;
use warnings;

use IO::Handle;
use IPC::Open3 qw(open3);
use JSON::PP ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep);

my $JSON = JSON::PP->new->utf8->canonical;

sub json { $JSON }

sub start {
    my ($class, $cmd, %o) = @_;

    my $self = bless { what => $o{what} // $cmd->[0], owner => $$ }, $class;
    local %ENV = (%ENV, %{ $o{env} || {} });
    # stderr to an unnamed file: a pipe nobody reads could fill up
    open my $err, '+>', undef or die "temporary file: $!";
    $self->{pid} = open3(my $in, my $out, '>&' . fileno($err), @$cmd);
    $in->autoflush(1);
    @$self{qw(in out err)} = ($in, $out, $err);

    return $self;
}

sub ask {
    my ($self, $question) = @_;

    local $SIG{PIPE} = 'IGNORE';
    my $fh = $self->{out};
    print { $self->{in} } $JSON->encode($question) . "\n"
        or die "$self->{what}: cannot write: $!\n" . $self->_stderr;
    my $line = <$fh>;
    die "$self->{what} gave no answer\n" . $self->_stderr
        unless defined $line;

    return $JSON->decode($line);
}

# what the process said on stderr (once it has exited)
sub _stderr {
    my ($self) = @_;
    $self->stop;
    my $fh = $self->{err} or return '';
    seek $fh, 0, 0;
    local $/;
    return scalar(<$fh>) // '';
}

sub stop {
    my ($self) = @_;

    return unless $self->{pid};
    close $self->{in};
    for (1 .. 100) {
        last if waitpid($self->{pid}, WNOHANG) == $self->{pid};
        sleep 0.02;
        if ($_ == 50) { kill 'TERM', $self->{pid} }
    }
    delete $self->{pid};
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{owner} == $$;
}

1;
