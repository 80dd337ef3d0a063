# Runs the C unit tests of src/core: t/core/test_core.c, built as
# build/test_core (the Makefile sets MATRIX_BUILD_DIR).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_core") or die "cannot run test_core: $!\n";
