# Runs the key document tests: t/core/test_key_doc.c, built as
# build/test_key_doc (the Makefile sets MATRIX_BUILD_DIR).
print("1..0 # SKIP MATRIX_BUILD_DIR is not set\n"), exit 0 unless $ENV{MATRIX_BUILD_DIR};
exec("$ENV{MATRIX_BUILD_DIR}/test_key_doc") or die "cannot run test_key_doc: $!\n";
