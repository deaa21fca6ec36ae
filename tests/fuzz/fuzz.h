// fuzz.h: what the libFuzzer harnesses of tests/fuzz/ share (fuzz_ prefix). Each fuzz_<name>.c
// defines LLVMFuzzerTestOneInput for one parser of bytes from the network or from files; it is
// linked with libFuzzer by `make fuzz` (clang, ASan, UBSan) and with the plain driver replay.c by
// `make test`, which feeds it the committed corpus and crash files. A harness is deterministic,
// frees what it allocates, writes only below /tmp, and aborts (fuzz_check) when a documented
// property of a parser fails: a crash then marks a wrong answer as well as a memory error.
// One harness per process, called from one thread.
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>

// LLVMFuzzerTestOneInput runs one input, data(n), through the harness. Returns 0.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

// FUZZ_SEP separates the parts of an input that feeds two files (fuzz_split).
#define FUZZ_SEP "\n--8<--\n"

// fuzz_check aborts with "fuzz: <what>" on stderr when ok is 0.
void fuzz_check(int ok, const char *what);

// fuzz_str returns a NUL-terminated copy of data(n) (an embedded NUL ends the string early).
// The caller frees it.
char *fuzz_str(const uint8_t *data, size_t n);

// fuzz_file writes data(n) to this process's temp file number slot (0 .. 3: one path each,
// made with mkstemp below /tmp, or below $FUZZ_TMPDIR if that is a folder in /tmp, on first use
// and removed at exit) and returns its path. Aborts if
// it cannot be written: that is the machine's fault, not the input's.
const char *fuzz_file(int slot, const uint8_t *data, size_t n);

// fuzz_dir returns this process's temp folder (below /tmp or $FUZZ_TMPDIR, as for fuzz_file;
// made on first use, removed with what the harness wrote in it, fuzz_dir_file, at exit).
const char *fuzz_dir(void);

// fuzz_dir_file writes data(n) to the file name in fuzz_dir() and returns its path (static
// storage, until the next call). Aborts as fuzz_file does.
const char *fuzz_dir_file(const char *name, const uint8_t *data, size_t n);

// fuzz_split cuts data(n) at the first FUZZ_SEP: the part before it is returned in *a (an,
// bytes), the part after in *b (bn bytes). Without a separator, all of data is a and b is empty.
void fuzz_split(const uint8_t *data, size_t n, const uint8_t **a, size_t *an, const uint8_t **b,
                size_t *bn);

#endif
