#!/bin/sh
# bench/events: events/s of hashing and signing, of verifying (content
# hash + signatures) and of the auth check of a typical m.room.message,
# each next to the raw libsodium ed25519 rate over the same canonical
# bytes in the same run.  Target: verify+hash >= 0.8 of raw verify.
#
# Single core: the process is pinned to one CPU (taskset) when it can be.
# Also runs bench/events/bench_state_res.c when that file exists.
#
#   sh bench/events/run.sh [SECONDS]      (per measurement, default 1.5)

set -e
cd "$(dirname "$0")/../.."

SECONDS_EACH=${1:-1.5}
CC=${CC:-cc}
CPU=${CPU:-1}

# the core's objects, built as the Makefile builds them
make -s tool

run=$(mktemp -d /tmp/matrix-bench-events-XXXXXX)
trap 'rm -rf $run' EXIT

CFLAGS="-std=c11 -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra -Werror -Isrc/core"

pin=""
if command -v taskset >/dev/null 2>&1 && taskset -c "$CPU" true 2>/dev/null; then
    pin="taskset -c $CPU"
fi

$CC $CFLAGS -o $run/bench_events bench/events/bench_events.c \
    build/core/*.o -ljansson -lsodium

status=0
$pin $run/bench_events "$SECONDS_EACH" || status=$?

if [ -f bench/events/bench_state_res.c ]; then
    $CC $CFLAGS -o $run/bench_state_res bench/events/bench_state_res.c \
        build/core/*.o -ljansson -lsodium
    $pin $run/bench_state_res || status=$?
fi

exit $status
