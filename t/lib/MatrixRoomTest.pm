package MatrixRoomTest;

# The stage of the room tests (t/110, t/120, t/130): the reference silo
# (examples/silo: schema, seed, the module's schema, the operator's
# mapping) in a throwaway Postgres, the silo's own server for its
# internal API, a fake remote homeserver over TLS (python3-signedjson)
# found through a test DNS, and nginx with the module as module.test;
# the silo's three rooms have Matrix room IDs (!general, !random,
# !private:module.test), as the directory would give them.
#
#   my $t = MatrixRoomTest->start(names => ['remote.test'], workers => 1);
#   my ($status, $json, $body) = $t->fed('GET', $uri);    # X-Matrix signed
#   $t->fed('PUT', $uri, \%content, 'other.test');       # as another name
#   $t->eventually($sql, $want);     # polls until SQL gives WANT (10 s)
#   $t->events_ok(\@pdus, $name, \@ids);    # hash, signature, ID checked
#   $t->silo_stop; $t->silo_start;
#   $t->restart_nginx(workers => 1, http => 'matrix_silo_supports typing;');
#   my $join = $t->remote_join('@carol:remote.test', $room);       # make/send_join
#   my ($pdu, $id) = $t->event(room_id => ..., sender => ..., content => ...,
#                              auth => [...]);               # signed, at the head
#   my ($status, $json) = $t->send_txn(\@pdus, edus => [...], as => 'remote.test');
#   my @pdus = $t->wait_pdus(sub { $_[0]{type} eq 'm.reaction' });  # sent to the fake
#   my ($status, $json) = $t->silo_call('POST', '/login', \%body [, $token]);
#   $t->pg, $t->fake, $t->dns, $t->ngx, $t->spec, $t->verify_keys
#
# The caller checks availability first: MatrixRoomTest::skip_reason().

use strict;
use warnings;

use Test::More;
use JSON::PP;
use FindBin;
use IPC::Run ();
use HTTP::Tiny;
use Time::HiRes qw(sleep);

use MatrixPg;
use MatrixNginx;
use MatrixFakeHS;
use MatrixDNS;
use MatrixTest;
use MatrixSpec;

my $SILO = "$FindBin::Bin/../examples/silo";
my $JSON = JSON::PP->new->canonical->utf8;

sub skip_reason {
    return 'no PostgreSQL server' unless MatrixPg::available();
    return 'no python3-aiohttp/signedjson' unless MatrixFakeHS::available();
    return 'MATRIX_TOOL is not set' unless $ENV{MATRIX_TOOL};
    return MatrixSpec::skip_reason();
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "$path: $!";
    local $/;
    return scalar <$fh>;
}

sub start {
    my ($class, %o) = @_;
    my $self = bless { names => $o{names} || ['remote.test'],
                       workers => $o{workers} || 1, silo_log => '' }, $class;

    $self->{spec} = MatrixSpec->start;
    $self->{keys} = { 'module.test' => { 'ed25519:1' => $MatrixTest::SPEC_PUBLIC_KEY } };

    my $pg = $self->{pg} = MatrixPg->start;
    $pg->psql(_slurp("$SILO/schema.sql"));
    $pg->psql(_slurp("$SILO/seed.sql"));
    system($ENV{MATRIX_TOOL}, 'migrate', $pg->conninfo) == 0
        or BAIL_OUT('matrix-tool migrate failed');
    $pg->psql(_slurp("$SILO/matrix.sql"));

    # the reference silo's own server, for its internal API
    my $token = 'silo-test-token-' . ('q9' x 12);
    $self->{token_file} = MatrixTest::write_file("$pg->{dir}/silo.token", "$token\n", 0600);
    $self->{silo_port} = MatrixNginx::_free_port();
    $self->silo_start;

    my $fake = $self->{fake} = MatrixFakeHS->start(names => $self->{names});
    $self->{dns} = MatrixDNS->start(records => {
        map { ($_ => { A => '127.0.0.1' },
               "_matrix-fed._tcp.$_" => { SRV => [[10, 5, $fake->port, $_]] }) }
            @{ $self->{names} } });

    $self->{http} = <<"EOF";
    matrix_server_name module.test;
    matrix_signing_key $ENV{TEST_NGINX_MATRIX_KEY};
    matrix_postgres "@{[ $pg->conninfo ]}" max=4 timeout=10s;
    matrix_federation_resolver @{[ $self->{dns}->resolver ]} ipv6=off;
    matrix_federation_trusted_certificate @{[ $fake->ca_file ]};
    matrix_federation_allow_ip 127.0.0.0/8;
    client_body_buffer_size 1m;
    matrix_silo_api http://127.0.0.1:$self->{silo_port}/internal/matrix/ token_file=$self->{token_file};
EOF
    $self->restart_nginx(workers => $self->{workers});

    $pg->psql(q{INSERT INTO matrix.matrix_rooms (room_id, silo_room_id, room_version)
                VALUES ('!general:module.test', '1', '10'),
                       ('!random:module.test', '2', '10'),
                       ('!private:module.test', '3', '10')});

    return $self;
}

sub pg    { $_[0]{pg} }
sub fake  { $_[0]{fake} }
sub dns   { $_[0]{dns} }
sub ngx   { $_[0]{ngx} }
sub spec  { $_[0]{spec} }
sub verify_keys { $_[0]{keys} }

sub restart_nginx {
    my ($self, %o) = @_;
    $self->{ngx}->stop if $self->{ngx};
    return $self->{ngx} = MatrixNginx->start(workers => $o{workers} || 1,
        http => $self->{http} . ($o{http} // ''),
        server => '        location /_matrix/ { matrix; }');
}

sub silo_start {
    my ($self) = @_;
    my @cmd = ('/usr/bin/python3', "$SILO/silo.py", '--dsn', $self->{pg}->conninfo,
               '--listen', "127.0.0.1:$self->{silo_port}",
               '--internal-token-file', $self->{token_file});
    my $h = IPC::Run::start \@cmd, '<', \undef, '>&', \$self->{silo_log};
    for (1 .. 200) {
        $h->pump_nb;
        if (HTTP::Tiny->new(timeout => 2)
                ->get("http://127.0.0.1:$self->{silo_port}/healthz")->{status} == 200) {
            $self->{silo_pid} = $h->{KIDS}[0]{PID};
            return $self->{silo} = $h;
        }
        sleep 0.1;
    }
    BAIL_OUT("silo.py did not start: $self->{silo_log}");
}

sub silo_stop {
    my ($self) = @_;
    if (${^GLOBAL_PHASE} eq 'DESTRUCT') {
        # IPC::Run is not to be used during global destruction
        if ($self->{silo_pid}) {
            kill 'KILL', $self->{silo_pid};
            waitpid $self->{silo_pid}, 0;
        }
    } elsif ($self->{silo} && $self->{silo}->pumpable) {
        $self->{silo}->kill_kill(grace => 3);
    }
    delete $self->{silo};
    delete $self->{silo_pid};
}

# polls SQL until it gives WANT (10 s at most); what it last gave
sub eventually {
    my ($self, $sql, $want) = @_;
    my $got;
    for (1 .. 100) {
        $got = $self->{pg}->psql($sql);
        return $got if $got eq $want;
        sleep 0.1;
    }
    return $got;
}

# every event this server serves: hash, signature and event ID as an
# independent implementation (t/tools/mx_event.py) sees them
sub events_ok {
    my ($self, $events, $name, $ids) = @_;
    my ($bad, $i) = (0, 0);
    for my $ev (@$events) {
        my $c = $self->{fake}->check_event('10', $ev, $self->{keys});
        my $want_id = $ids ? $ids->[$i] : undef;
        if (!$c->{signatures_ok} || !$c->{hash_ok}
            || (defined $want_id && $c->{event_id} ne $want_id)) {
            diag "$name: event $i: " . encode_json($c) unless $bad++;
        }
        $i++;
    }
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is $bad, 0, "$name: every event's hash, signature and ID check out ("
              . scalar(@$events) . ")";
}

# METHOD URI [CONTENT [AS]]: signed by AS (the first name by default)
sub fed {
    my ($self, $method, $uri, $content, $as) = @_;
    my $auth = $self->{fake}->x_matrix($as // $self->{names}[0], method => $method,
                                       uri => $uri, destination => 'module.test',
                                       defined $content ? (content => $content) : ());
    my ($status, $head, $body) = $self->{ngx}->request($method, $uri,
        defined $content ? $JSON->encode($content) : undef,
        Authorization => $auth,
        defined $content ? ('Content-Type' => 'application/json') : ());
    my $json = eval { decode_json($body) };
    return ($status, $json, $body);
}

# USER of the fake server joins ROOM (make_join, send_join); its join
# event's ID, undef if either step failed
sub remote_join {
    my ($self, $user, $room) = @_;
    my ($server) = $user =~ /:(.*)$/;
    my ($st, $json) = $self->fed('GET',
        "/_matrix/federation/v1/make_join/$room/$user?ver=10", undef, $server);
    return undef unless $st == 200;
    my $signed = $self->{fake}->sign_event($server, '10', $json->{event});
    ($st) = $self->fed('PUT',
        "/_matrix/federation/v2/send_join/$room/$signed->{event_id}",
        $signed->{event}, $server);
    return $st == 200 ? $signed->{event_id} : undef;
}

# the ID of ROOM's current state event TYPE, KEY
sub state_id {
    my ($self, $room, $type, $key) = @_;
    return scalar $self->{pg}->psql(qq{SELECT e.event_id
          FROM matrix.matrix_rooms r JOIN matrix.room_state s ON s.room_nid = r.room_nid
          JOIN matrix.events e ON e.nid = s.event_nid
         WHERE r.room_id = '$room' AND s.type = '$type' AND s.state_key = '$key'});
}

# an event of the fake server's user in a room, after the room's head as
# this server has it, signed: (PDU, event ID)
sub event {
    my ($self, %o) = @_;
    my ($server) = $o{sender} =~ /:(.*)$/;
    my $h = decode_json(scalar $self->{pg}->psql(qq{SELECT jsonb_build_object(
        'prev', jsonb_agg(e.event_id ORDER BY e.nid), 'depth', max(e.depth) + 1)
          FROM matrix.matrix_rooms r
          JOIN matrix.forward_extremities f ON f.room_nid = r.room_nid
          JOIN matrix.events e ON e.nid = f.event_nid
         WHERE r.room_id = '$o{room_id}'}));
    my $s = $self->{fake}->sign_event($server, '10', {
        type => $o{type} // 'm.room.message', room_id => $o{room_id},
        sender => $o{sender}, origin => $server,
        origin_server_ts => int(Time::HiRes::time() * 1000),
        depth => $h->{depth}, prev_events => $h->{prev},
        auth_events => $o{auth}, content => $o{content},
        defined $o{redacts} ? (redacts => $o{redacts}) : () });
    return ($s->{event}, $s->{event_id});
}

# PUT /send of PDUS (and EDUS) as the server AS (the first name)
my $txn_n = 0;
sub send_txn {
    my ($self, $pdus, %o) = @_;
    my $as = $o{as} // $self->{names}[0];
    return $self->fed('PUT', '/_matrix/federation/v1/send/txn' . ++$txn_n . "-$$", {
        origin => $as, origin_server_ts => int(Time::HiRes::time() * 1000),
        pdus => $pdus, $o{edus} ? (edus => $o{edus}) : () }, $as);
}

# the PDUs of the transactions the fake server answered 200, in order
sub sent_pdus {
    my ($self) = @_;
    return map { @{ $_->{json}{pdus} || [] } }
           grep { ($_->{status} // 0) == 200 }
           $self->{fake}->requests(method => 'PUT',
                                   path => '/_matrix/federation/v1/send/');
}

# those of them COND is true of, once there are any (SECS, 15 s, at most)
sub wait_pdus {
    my ($self, $cond, $secs) = @_;
    my @p;
    for (1 .. ($secs // 15) * 10) {
        @p = grep { $cond->($_) } $self->sent_pdus;
        return @p if @p;
        sleep 0.1;
    }
    return @p;
}

# METHOD PATH [BODY [TOKEN]] of the silo's user API (/api): (status, JSON)
sub silo_call {
    my ($self, $method, $path, $body, $token) = @_;
    my $r = HTTP::Tiny->new(timeout => 10)->request($method,
        "http://127.0.0.1:$self->{silo_port}/api$path",
        { defined $body ? (content => encode_json($body)) : (),
          headers => { 'Content-Type' => 'application/json',
                       $token ? (Authorization => "Bearer $token") : () } });
    return ($r->{status}, eval { decode_json($r->{content}) });
}

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->silo_stop;
}

1;
