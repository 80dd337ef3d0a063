package MatrixDNS;

# A DNS server the tests control, on 127.0.0.1:<free port>, UDP and TCP
# on the same port, answering from a table of records:
#
#   my $dns = MatrixDNS->start(records => {
#       'remote.test' => { A => '127.0.0.1' },
#       'v6.test'     => { AAAA => '::1' },
#       '_matrix-fed._tcp.srv.test' => { SRV => [[10, 5, 8448, 'target.test']] },
#       'alias.test'  => { CNAME => 'remote.test' },
#       '*.wild.test' => { A => ['127.0.0.2', '127.0.0.3'], ttl => 5 },
#       'broken.test' => { rcode => 'SERVFAIL' },      # or REFUSED
#       'slow.test'   => { A => '127.0.0.1', delay_ms => 1500 },
#       'silent.test' => { drop => 1 },                # never answers
#       'tcp.test'    => { A => '127.0.0.1', truncate => 1 },  # TC over UDP
#   });
#   "resolver " . $dns->resolver . " ipv6=off;"   # 127.0.0.1:PORT
#   $dns->set_records({...});   $dns->add_records({...});   # while running
#   $dns->queries(name => 'remote.test', type => 'A');  # what was asked
#   $dns->query_count('remote.test', 'A');   $dns->reset_queries;
#   $dns->stop;
#
# Answers are authoritative. A name not in the table is NXDOMAIN; a name
# in it without records of the asked type is NODATA (NOERROR, no
# answer). A CNAME is followed through the table, like a recursive
# resolver would. Over UDP an answer larger than 512 bytes (or one
# marked truncate) is sent empty with TC set, so the client retries over
# TCP. TTLs are the record's ttl, else start's ttl (default 60).
#
# The server is Debian's python3-dnslib (a DNS message library) under a
# small asyncio loop embedded below, rather than dnsmasq: records change
# without a restart (the table file is re-read when it changes, checked
# on every query, so a change holds from the next query on), unknown
# names are exactly NXDOMAIN (dnsmasq --address also answers every
# subdomain, and with no upstream refuses unknown names), the query log
# is JSON, and answers can be delayed, dropped, failed or truncated.

use strict;
use warnings;

use File::Temp qw(tempdir);
use JSON::PP ();

use MatrixFakeHS ();    # MatrixFakeHS::Child: start, stop, error_log

our @ISA = ('MatrixFakeHS::Child');

my $JSON = JSON::PP->new->utf8->canonical;

sub available {
    return system('/usr/bin/python3', '-c', 'import dnslib') == 0;
}

my %KNOWN = map { $_ => 1 }
    qw(A AAAA SRV CNAME TXT ttl rcode delay_ms drop truncate);

# the table as the server reads it: lower-case names without the final
# dot, every record type a list
sub _normalize {
    my ($records) = @_;
    my %out;

    for my $name (keys %$records) {
        my $in = $records->{$name};
        die "MatrixDNS: records of $name must be a hash\n"
            unless ref $in eq 'HASH';

        my %e;
        for my $k (keys %$in) {
            die "MatrixDNS: $name: unknown $k (known: "
                . join(', ', sort keys %KNOWN) . ")\n" unless $KNOWN{$k};
            my $v = $in->{$k};

            if ($k eq 'SRV') {
                $v = [$v] if ref $v eq 'ARRAY' && @$v && !ref $v->[0];
                for (@$v) {
                    die "MatrixDNS: $name: SRV is [priority, weight, port, "
                        . "target]\n" unless ref eq 'ARRAY' && @$_ == 4;
                }
                $e{$k} = [map { [@$_[0 .. 2], _fqdn($_->[3])] } @$v];
            } elsif ($k eq 'CNAME') {
                $e{$k} = _fqdn($v);
            } elsif ($k =~ /^(A|AAAA|TXT)$/) {
                $e{$k} = ref $v ? [@$v] : [$v];
            } else {
                $e{$k} = $v;
            }
        }

        $out{ _fqdn($name) } = \%e;
    }

    return \%out;
}

sub _fqdn {
    my ($name) = @_;
    $name = lc $name;
    $name =~ s/\.$//;
    return $name;
}

sub _write_table {
    my ($self) = @_;

    my $tmp = "$self->{table}.$$.tmp";
    open my $fh, '>', $tmp or die "$tmp: $!";
    print $fh $JSON->encode({ ttl => $self->{ttl}, records => $self->{records} });
    close $fh or die "$tmp: $!";
    # a new file (a new inode): the server sees the change at once
    rename $tmp, $self->{table} or die "rename $tmp: $!";
}

sub start {
    my ($class, %o) = @_;

    my $self = bless { ttl => $o{ttl} // 60,
                       records => _normalize($o{records} || {}) }, $class;

    $self->{dir} = tempdir('mxdns-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    $self->{table} = "$self->{dir}/records.json";
    $self->{log} = "$self->{dir}/queries.jsonl";
    $self->_write_table;

    my $script = "$self->{dir}/fake_dns.py";
    open my $fh, '>', $script or die "$script: $!";
    print $fh _server_source();
    close $fh;

    $self->{port} = $self->_spawn(
        ['/usr/bin/python3', $script, $self->{table}, $self->{log},
         $o{address} // '127.0.0.1', $o{port} // 0, $$],
        "$self->{dir}/fake_dns.err", 'fake_dns');

    return $self;
}

sub port { $_[0]{port} }
sub resolver { "127.0.0.1:$_[0]{port}" }
sub records { $_[0]{records} }

# replaces the whole table
sub set_records {
    my ($self, $records) = @_;

    $self->{records} = _normalize($records);
    $self->_write_table;
}

# adds or replaces the records of the names given (undef removes a name)
sub add_records {
    my ($self, $records) = @_;

    for my $name (keys %$records) {
        if (defined $records->{$name}) {
            my $n = _normalize({ $name => $records->{$name} });
            @{ $self->{records} }{ keys %$n } = values %$n;
        } else {
            delete $self->{records}{ _fqdn($name) };
        }
    }
    $self->_write_table;
}

# the queries received, oldest first: {name, type, proto ("udp"/"tcp"),
# rcode ("NOERROR", "NXDOMAIN", ..., "dropped"), answers, ts}; only
# those with the given name and/or type
sub queries {
    my ($self, %f) = @_;

    open my $fh, '<', $self->{log} or return ();
    my @q;
    while (my $l = <$fh>) {
        next unless $l =~ /\n\z/;    # a line still being written
        my $q = $JSON->decode($l);
        next if defined $f{name} && $q->{name} ne _fqdn($f{name});
        next if defined $f{type} && $q->{type} ne uc $f{type};
        next if defined $f{proto} && $q->{proto} ne $f{proto};
        push @q, $q;
    }

    return @q;
}

sub query_count {
    my ($self, $name, $type) = @_;
    return scalar $self->queries(name => $name,
                                 defined $type ? (type => $type) : ());
}

sub reset_queries {
    my ($self) = @_;
    truncate $self->{log}, 0 if -e $self->{log};
}

sub _server_source { <<'PY' }
# fake_dns (written by t/lib/MatrixDNS.pm): answers from a JSON table.
# argv: TABLE LOG ADDRESS PORT PARENT_PID
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time

from dnslib import (AAAA, CNAME, QTYPE, RCODE, RR, SRV, TXT, A, DNSLabel,
                    DNSRecord)

TABLE, LOG, ADDRESS, PORT, PARENT = sys.argv[1:6]
RDATA = {"A": A, "AAAA": AAAA, "TXT": TXT, "CNAME": CNAME}


class Table:
    def __init__(self, path):
        self.path, self.stamp, self.data = path, None, None

    def get(self):
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self.stamp:
            with open(self.path) as f:
                self.data = json.load(f)
            self.stamp = stamp
        return self.data


table = Table(TABLE)
log = open(LOG, "a")


def lookup(records, name):
    if name in records:
        return records[name]
    labels = name.split(".")
    for i in range(1, len(labels)):
        wild = "*." + ".".join(labels[i:])
        if wild in records:
            return records[wild]
    return None


def records_of(entry, qname, qtype, ttl):
    ttl = entry.get("ttl", ttl)
    out = []
    for rtype in ([qtype] if qtype != "ANY" else ["A", "AAAA", "SRV", "TXT"]):
        for v in entry.get(rtype, []):
            if rtype == "SRV":
                rdata = SRV(priority=v[0], weight=v[1], port=v[2],
                            target=v[3] + ".")
            else:
                rdata = RDATA[rtype](v)
            out.append(RR(qname, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
    return out


def answer(data, proto):
    """(reply bytes or None, entry) for one query."""
    req = DNSRecord.parse(data)
    reply = req.reply(ra=1, aa=1)
    reply.header.ad = 0
    q = req.q
    name = str(q.qname).rstrip(".").lower()
    qtype = QTYPE.get(q.qtype, str(q.qtype))
    t = table.get()
    records, ttl = t["records"], t["ttl"]
    entry = lookup(records, name)
    if entry is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif "rcode" in entry:
        reply.header.rcode = getattr(RCODE, entry["rcode"])
    else:
        qname, seen = q.qname, set()
        while "CNAME" in entry and qtype != "CNAME" and qname not in seen:
            seen.add(qname)
            target = entry["CNAME"]
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(target + "."),
                                ttl=entry.get("ttl", ttl)))
            qname = DNSLabel(target + ".")
            entry = lookup(records, target)
            if entry is None:
                reply.header.rcode = RCODE.NXDOMAIN
                break
        if entry is not None:
            for rr in records_of(entry, qname, qtype, ttl):
                reply.add_answer(rr)
    out = reply.pack()
    truncated = False
    if proto == "udp" and ((entry or {}).get("truncate") or len(out) > 512):
        reply.rr = []
        reply.header.tc = 1
        out = reply.pack()
        truncated = True
    rec = {"ts": int(time.time() * 1000), "name": name, "type": qtype,
           "proto": proto, "rcode": RCODE.get(reply.header.rcode),
           "answers": len(reply.rr), "truncated": truncated}
    entry = entry or {}
    if entry.get("drop"):
        rec["rcode"] = "dropped"
    log.write(json.dumps(rec, sort_keys=True) + "\n")
    log.flush()
    return (None if entry.get("drop") else out), entry


async def respond(data, proto, send):
    try:
        out, entry = answer(data, proto)
    except Exception as e:
        print("fake_dns: bad query: %r" % e, file=sys.stderr, flush=True)
        return
    if entry.get("delay_ms"):
        await asyncio.sleep(entry["delay_ms"] / 1000)
    if out is not None:
        send(out)


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        asyncio.ensure_future(respond(
            data, "udp", lambda out: self.transport.sendto(out, addr)))


async def tcp_client(reader, writer):
    # further queries may follow on the connection; idle, it is closed
    # soon (as servers may, RFC 7766), so no client waits on it
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), 0.2)
            data = await reader.readexactly(struct.unpack("!H", head)[0])
            await respond(data, "tcp", lambda out: writer.write(
                struct.pack("!H", len(out)) + out))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError,
            ConnectionError):
        pass
    finally:
        writer.close()


def sockets():
    """UDP and TCP sockets on one port (a free one when PORT is 0)."""
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((ADDRESS, int(PORT)))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((ADDRESS, port))
        except OSError:
            udp.close()
            tcp.close()
            if int(PORT):
                raise
            continue
        tcp.listen(64)
        return udp, tcp, port
    raise OSError("no port free for both UDP and TCP")


async def main():
    udp, tcp, port = sockets()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, sock=udp)
    await asyncio.start_server(tcp_client, sock=tcp)
    print("fake_dns: ready %d" % port, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            try:
                os.kill(int(PARENT), 0)
            except ProcessLookupError:
                return


asyncio.run(main())
PY

1;
