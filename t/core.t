# Runs the C unit tests of src/core (t/core/test_core.c, built as build/test-core).
print("1..0 # SKIP MATRIX_TEST_CORE is not set\n"), exit 0 unless $ENV{MATRIX_TEST_CORE};
exec($ENV{MATRIX_TEST_CORE}) or die "cannot run $ENV{MATRIX_TEST_CORE}: $!\n";
