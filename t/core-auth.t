# Runs the authorisation rule tests: t/core/test_auth.c, built as
# build/test_auth (the Makefile sets MATRIX_BUILD_DIR).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_auth") or die "cannot run test_auth: $!\n";
