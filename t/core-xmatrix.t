# Runs the X-Matrix authentication and SSRF address tests:
# t/core/test_xmatrix.c, built as build/test_xmatrix (the Makefile sets
# MATRIX_BUILD_DIR and MX_VECTORS).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_xmatrix") or die "cannot run test_xmatrix: $!\n";
