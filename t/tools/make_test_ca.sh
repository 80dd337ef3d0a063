#!/bin/sh
# A throwaway certificate authority and server certificates for tests,
# made with openssl at test time (nothing here is ever committed).
#
#   make_test_ca.sh [OPTIONS] DIR [NAMES ...]
#
# Creates DIR (mode 0700) and in it the CA, unless DIR/ca.crt exists:
#   DIR/ca.crt  DIR/ca.key     the CA (the bundle a client trusts)
# then, for each NAMES argument, a certificate signed by the CA:
#   DIR/FIRST.crt  DIR/FIRST.key
# NAMES is one name or several joined by commas: every one becomes a
# subjectAltName (DNS, or IP for an IPv4/IPv6 address); FIRST, the
# first of them, names the files and is the certificate's CN.
#   make_test_ca.sh /tmp/x remote.test notary.test,127.0.0.1,::1
# A wildcard name ("*.test") is a DNS name like any other.
#
# Options (they apply to every certificate of the call):
#   --out BASE     name the files BASE.crt / BASE.key (one NAMES only)
#   --days N       valid from an hour ago for N days (default 30)
#   --expired      valid last year only (expired a day ago)
#   --not-yet      valid only from tomorrow on
#   --self-signed  signed by its own key, not by the CA
#
# Keys are ECDSA P-256: fast to make, and every TLS stack takes them.
# Prints the path of each certificate made.

set -eu
set -f   # names are never globbed (a wildcard name is "*.test")

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

out= days=30 dates=days self_signed= dir= names_list=
# options may come before or after DIR and the names
while [ $# -gt 0 ]; do
    case $1 in
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
        --expired) dates=expired; shift ;;
        --not-yet) dates=not-yet; shift ;;
        --self-signed) self_signed=1; shift ;;
        --help|-h) usage ;;
        -*) echo "make_test_ca.sh: unknown option $1" >&2; usage ;;
        *)
            case $1 in
                *[!A-Za-z0-9.,:_/*-]*)
                    echo "make_test_ca.sh: bad argument '$1'" >&2; exit 2 ;;
            esac
            if [ -z "$dir" ]; then
                dir=$1
            else
                names_list="$names_list $1"
            fi
            shift ;;
    esac
done

[ -n "$dir" ] || usage
# shellcheck disable=SC2086
set -- $names_list
if [ -n "$out" ] && [ $# -ne 1 ]; then
    echo "make_test_ca.sh: --out takes exactly one NAMES argument" >&2
    exit 2
fi

mkdir -p "$dir"
chmod 0700 "$dir"

# YYYYMMDDHHMMSSZ, $1 seconds from now (GNU date)
stamp() {
    date -u -d "@$(( $(date +%s) + $1 ))" +%Y%m%d%H%M%SZ
}

case $dates in
    days)    start=$(stamp -3600) end=$(stamp $(( days * 86400 ))) ;;
    expired) start=$(stamp -31536000) end=$(stamp -86400) ;;
    not-yet) start=$(stamp 86400) end=$(stamp $(( 86400 * 31 ))) ;;
esac

cnf=$dir/openssl.cnf
if [ ! -f "$cnf" ]; then
    cat > "$cnf" <<EOF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca ]
default_ca = test_ca
[ test_ca ]
database = $dir/index.txt
new_certs_dir = $dir/issued
rand_serial = yes
unique_subject = no
default_md = sha256
policy = any
copy_extensions = none
[ any ]
commonName = supplied
[ ca_ext ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
fi
: >> "$dir/index.txt"
mkdir -p "$dir/issued"

newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$1" 2>/dev/null
    chmod 0600 "$1"
}

if [ ! -f "$dir/ca.crt" ]; then
    newkey "$dir/ca.key"
    openssl req -config "$cnf" -new -x509 -key "$dir/ca.key" \
        -subj "/CN=matrix test CA $$" -days 3650 -extensions ca_ext \
        -out "$dir/ca.crt"
fi

for names in "$@"; do
    first=${names%%,*}
    base=${out:-$first}
    case $first in
        ''|*/*|.*) echo "make_test_ca.sh: bad name '$first'" >&2; exit 2 ;;
    esac

    san=
    old_ifs=$IFS
    IFS=,
    for n in $names; do
        case $n in
            *:*) kind=IP ;;          # IPv6
            *[!0-9.]*) kind=DNS ;;
            *) kind=IP ;;            # dotted digits: IPv4
        esac
        san="${san:+$san,}$kind:$n"
    done
    IFS=$old_ifs

    ext=$dir/$base.ext
    cat > "$ext" <<EOF
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = $san
EOF
    [ -n "$self_signed" ] \
        || echo "authorityKeyIdentifier = keyid" >> "$ext"

    newkey "$dir/$base.key"
    openssl req -config "$cnf" -new -key "$dir/$base.key" -subj "/CN=$first" \
        -out "$dir/$base.csr"

    if [ -n "$self_signed" ]; then
        signer="-selfsign" signer_key=$dir/$base.key
    else
        signer="-cert $dir/ca.crt" signer_key=$dir/ca.key
    fi
    # $signer unquoted on purpose: an option and maybe its argument
    # shellcheck disable=SC2086
    if ! openssl ca -config "$cnf" -batch -notext $signer \
            -keyfile "$signer_key" \
            -in "$dir/$base.csr" -startdate "$start" -enddate "$end" \
            -extfile "$ext" -extensions leaf -out "$dir/$base.crt" \
            2> "$dir/$base.err"; then
        cat "$dir/$base.err" >&2
        exit 1
    fi
    rm -f "$dir/$base.err" "$dir/$base.csr" "$ext"
    echo "$dir/$base.crt"
done
