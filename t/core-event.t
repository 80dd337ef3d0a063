# Runs the C unit tests of PDU hashing, signing, IDs and redaction:
# t/core/test_event.c, built as build/test_event, over the vectors in
# MX_VECTORS (the Makefile sets both variables).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_event", "$ENV{MX_VECTORS}") or die "cannot run test_event: $!\n";
