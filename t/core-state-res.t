# Runs the state resolution unit tests: t/core/test_state_res.c, built as
# build/test_state_res (the Makefile sets MATRIX_BUILD_DIR).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_state_res") or die "cannot run test_state_res: $!\n";
