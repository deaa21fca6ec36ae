# spartan: the only build file. `make` builds bin/spartan; see `make help`.
# Objects go to build/<variant>/<dir>/; tests are tests/*_test.c (one Criterion binary each),
# benchmarks are tests/bench_*.c.

UNAME := $(shell uname -s)
OPT ?= -O3 -march=native
WERROR ?= 0
V ?= 0

CFLAGS_BASE := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Wshadow \
	-Wstrict-prototypes -Wmissing-prototypes -Wvla -g -MMD -MP -I.
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif

PKG_CONFIG ?= pkg-config
# Prefer the OpenMP build of OpenBLAS on Debian/Ubuntu, so that BLAS and our kernels share one
# OpenMP thread pool instead of two pools spinning against each other.
OPENBLAS_OMP_DIR := $(firstword $(wildcard /usr/lib/*/openblas-openmp))

ifeq ($(UNAME),Darwin)
BLAS ?= accelerate
BREW := $(shell brew --prefix 2>/dev/null)
# -D_POSIX_C_SOURCE hides the BSD half of the SDK's headers (ip_mreq, SO_REUSEPORT, F_FULLFSYNC);
# _DARWIN_C_SOURCE is macOS's _DEFAULT_SOURCE.
CFLAGS_BASE += -D_DARWIN_C_SOURCE
# brew keeps openssl@3, curl and openblas keg-only (not linked into $(BREW)), so pkg-config finds
# their .pc files by path only; the PATH goes on each call, as make 3.81 (macOS's) passes no
# exported variables to $(shell). nng and libomp ship no .pc file: $(BREW)/include and lib.
BREW_PC := $(BREW)/opt/openssl@3/lib/pkgconfig:$(BREW)/opt/curl/lib/pkgconfig:$(BREW)/opt/openblas/lib/pkgconfig
PKGC := PKG_CONFIG_PATH=$(BREW_PC)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH)) $(PKG_CONFIG)
BREW_CFLAGS := -I$(BREW)/include
NNG_FALLBACK := -L$(BREW)/lib -lnng
OMP_CFLAGS := -Xpreprocessor -fopenmp -I$(BREW)/opt/libomp/include
OMP_LIBS := -L$(BREW)/opt/libomp/lib -lomp
# The TSan build drops -fopenmp and links the OpenMP runtime by hand: libomp is in OMP_LIBS.
TSAN_OMP :=
else
BLAS ?= openblas
PKGC := $(PKG_CONFIG)
BREW_CFLAGS :=
NNG_FALLBACK := -lnng
OMP_CFLAGS := -fopenmp
OMP_LIBS := -fopenmp
TSAN_OMP := -lgomp
endif

ifeq ($(BLAS),accelerate)
BLAS_CFLAGS := -DUSE_ACCELERATE -DACCELERATE_NEW_LAPACK
BLAS_LIBS := -framework Accelerate
else ifneq ($(OPENBLAS_OMP_DIR),)
BLAS_CFLAGS := $(shell PKG_CONFIG_PATH=$(OPENBLAS_OMP_DIR)/pkgconfig $(PKG_CONFIG) --cflags openblas 2>/dev/null)
BLAS_LIBS := -L$(OPENBLAS_OMP_DIR) -Wl,-rpath,$(OPENBLAS_OMP_DIR) -lopenblas
else
BLAS_CFLAGS := $(shell $(PKGC) --cflags openblas 2>/dev/null)
BLAS_LIBS := $(shell $(PKGC) --libs openblas 2>/dev/null || echo -lopenblas)
endif

PKGS := hdf5 libcurl libcrypto libpcre2-8 libisal inih jansson libmicrohttpd
DEP_CFLAGS := $(shell $(PKGC) --cflags $(PKGS) 2>/dev/null) $(BREW_CFLAGS)
DEP_LIBS := $(shell $(PKGC) --libs $(PKGS) 2>/dev/null)
# nng 1.x installs no .pc file on every platform.
NNG_LIBS := $(shell $(PKGC) --libs nng 2>/dev/null || echo $(NNG_FALLBACK)) -lpthread
CRIT_CFLAGS := $(shell $(PKGC) --cflags criterion 2>/dev/null)
CRIT_LIBS := $(shell $(PKGC) --libs criterion 2>/dev/null || echo -lcriterion)

# Sanitizer variants build at -O1 so that reports point at the right lines.
VARIANT ?= rel
ifneq ($(filter asan tsan fuzz,$(VARIANT)),)
OPT := -O1 -march=native
endif
# The libFuzzer variant (make fuzz) needs clang; FUZZ_CC names it.
FUZZ_CC ?= clang-14
ifeq ($(VARIANT),fuzz)
CC := $(FUZZ_CC)
endif
# Cross variant for linux-arm64 (make test-arm64): aarch64-linux-gnu-gcc against the sysroot that
# scripts/arm64-sysroot unpacks from the arm64 .debs. No pkg-config: hdf5.pc and cblas.h are
# Debian alternatives, which `dpkg -x` does not set up, and criterion.pc requires four more .pc
# files, so the flags name the multiarch folders directly. Tests link all of LIB_OBJ, as on
# amd64: hdf5 alone already needs libcurl and OpenSSL at run time, so narrowing the objects would
# save one package (libmicrohttpd) and cost a second link rule.
B_ARM64 := build/arm64
ARM64_SYSROOT ?= $(CURDIR)/$(B_ARM64)/sysroot
# The cross toolchain's C library (libc6-dev-arm64-cross), which qemu-user loads the tests with.
ARM64_CROSS_ROOT ?= /usr/aarch64-linux-gnu
ARM64_OPT ?= -O2
ifeq ($(VARIANT),arm64)
CC := aarch64-linux-gnu-gcc
override OPT := $(ARM64_OPT)
ARM64_LIB := $(ARM64_SYSROOT)/usr/lib/aarch64-linux-gnu
ARM64_LIBDIRS := $(ARM64_LIB) $(ARM64_LIB)/openblas-openmp $(ARM64_LIB)/hdf5/serial \
	$(ARM64_SYSROOT)/lib/aarch64-linux-gnu
BLAS_CFLAGS := -I$(ARM64_SYSROOT)/usr/include/aarch64-linux-gnu/openblas-openmp
BLAS_LIBS := -lopenblas
DEP_CFLAGS := -I$(ARM64_SYSROOT)/usr/include -I$(ARM64_SYSROOT)/usr/include/aarch64-linux-gnu \
	-I$(ARM64_SYSROOT)/usr/include/hdf5/serial
DEP_LIBS := $(ARM64_LIBDIRS:%=-L%) $(ARM64_LIBDIRS:%=-Wl,-rpath-link,%) -lhdf5 -lcurl -lcrypto \
	-lpcre2-8 -lisal -linih -ljansson -lmicrohttpd
NNG_LIBS := -lnng -lpthread
CRIT_CFLAGS := -pthread -DBXF_STATIC_LIB=1
CRIT_LIBS := -lcriterion
# DT_RPATH (not RUNPATH, which the loader applies to direct dependencies only) into the sysroot, so
# that no LD_LIBRARY_PATH of arm64 folders leaks into the host programs that tests start.
LDLIBS_ARM64 := -Wl,--disable-new-dtags $(ARM64_LIBDIRS:%=-Wl,-rpath,%)
TEST_EXTRA := $(B_ARM64)/tests/qemu_exec.o
endif
CFLAGS := $(CFLAGS_BASE) $(OPT) $(OMP_CFLAGS) $(BLAS_CFLAGS) $(DEP_CFLAGS)
LDLIBS := $(BLAS_LIBS) $(DEP_LIBS) $(NNG_LIBS) $(OMP_LIBS) -lm $(LDLIBS_ARM64)

# Variant: build/rel (default), build/asan (make sanitize), build/tsan (make tsan) or
# build/arm64 (make test-arm64).
B := build/$(VARIANT)
ifeq ($(VARIANT),asan)
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDLIBS += -fsanitize=address,undefined
endif
# libFuzzer: every object gets the coverage hooks (fuzzer-no-link), ASan and UBSan; only the
# harnesses link the fuzzer's main. OpenMP is compiled out as for TSan (the harnesses run one
# thread; variables that only the pragmas use are then unused) and libgomp linked for the omp_
# calls and OpenBLAS.
ifeq ($(VARIANT),fuzz)
CFLAGS := $(filter-out -fopenmp -Xpreprocessor,$(CFLAGS)) -Wno-unknown-pragmas \
	-Wno-unused-variable -Wno-unused-but-set-variable \
	-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
LDLIBS := $(filter-out -fopenmp,$(LDLIBS)) -lgomp -fsanitize=fuzzer,address,undefined
endif
# TSan: our OpenMP pragmas are compiled out (libgomp is not instrumented and would only give
# false reports); the threads under test are the exchanger's and nng's.
ifeq ($(VARIANT),tsan)
CFLAGS := $(filter-out -fopenmp -Xpreprocessor,$(CFLAGS)) -Wno-unknown-pragmas -fsanitize=thread -fno-omit-frame-pointer
LDLIBS += -fsanitize=thread $(TSAN_OMP)
endif

# Every .c under the source folders is library code, but for the entry point.
SRC_DIRS := train data infer sparta diloco
LIB_SRC := $(filter-out train/cmd/main.c,$(shell find $(SRC_DIRS) -name '*.c' | sort))
LIB_OBJ := $(LIB_SRC:%.c=$(B)/%.o)
MAIN_OBJ := $(B)/train/cmd/main.o
TEST_SRC := $(wildcard tests/*_test.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(B)/tests/%)
# tests/sys_test.c runs a second time against the portable build of the platform file
# (train/base/sys.c with -DSPARTAN_FORCE_PORTABLE: the POSIX-only branches that macOS shares).
PORTABLE_SYS_OBJ := $(B)/portable/train/base/sys.o
TEST_BIN += $(B)/tests/sys_portable_test
TU_OBJ := $(B)/tests/test_util.o
# Programs the tests start (tests/insider_peer.c: a malicious peer, see tests/insider_test.c).
TEST_HELPER_BIN := $(B)/tests/insider_peer
BENCH_SRC := $(wildcard tests/bench_*.c)
BENCH_SH := $(wildcard tests/bench_*.sh)
TEST_SH := $(filter-out $(BENCH_SH),$(wildcard tests/*.sh))
BENCH_BIN := $(BENCH_SRC:tests/%.c=$(B)/tests/%)
SPARTAN := $(if $(filter rel,$(VARIANT)),bin/spartan,$(B)/spartan)
# Fuzz harnesses, tests/fuzz/fuzz_<name>.c (tests/fuzz/fuzz.h). Under VARIANT=fuzz they link
# libFuzzer (make fuzz); in every other variant the plain driver tests/fuzz/replay.c, and
# tests/fuzz_replay.sh replays the committed corpus and crash files through them (make test).
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/tests/fuzz/%)
FUZZ_DRIVER := $(if $(filter fuzz,$(VARIANT)),,$(B)/tests/fuzz/replay.o)
FUZZ_TIME ?= 60

ifeq ($(V),1)
Q :=
else
Q := @
endif

.SECONDARY:
.PHONY: all test run-tests test-arm64 run-tests-arm64 bench sanitize tsan run deps deps-test lint \
	clean help fixtures check-deps check-deps-test fuzz fuzz-build fuzz-seeds
all: check-deps $(SPARTAN)

help:
	@echo "make            build bin/spartan"
	@echo "make run        install deps if needed, build, train configs/tiny.ini, print a sample"
	@echo "make test       install the test deps if needed, build and run every tests/*_test.c"
	@echo "make deps       install the build and run-time deps (scripts/install-deps run)"
	@echo "make deps-test  also Criterion, gnuplot and Chromium (scripts/install-deps test)"
	@echo "make bench      run the benchmarks (BENCH <key> <value> lines)"
	@echo "make test-arm64 cross-build for linux-arm64 and run the core suites under qemu-user"
	@echo "make sanitize   run the test suite under ASan+UBSan (build/asan)"
	@echo "make tsan       run the exchanger stress program under ThreadSanitizer (build/tsan)"
	@echo "make fuzz       run every libFuzzer harness of tests/fuzz/ FUZZ_TIME s (60) with clang"
	@echo "make lint       include layers (scripts/check-layers) and clang-format (run by make test)"
	@echo "make clean      remove build/ and bin/"

# One line per dependency, as llm.c does; stop with an install hint if one is missing. The run
# set is what bin/spartan needs; the test set adds Criterion and gnuplot (scripts/check-deps).
check-deps:
	@VERBOSE=1 $(SHELL) scripts/check-deps run || { echo "missing dependencies: run scripts/install-deps (or make deps)"; exit 1; }

check-deps-test:
	@VERBOSE=1 $(SHELL) scripts/check-deps test || { echo "missing test dependencies: run scripts/install-deps test (or make deps-test)"; exit 1; }

$(SPARTAN): $(MAIN_OBJ) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
	@echo "  LINK $@"

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC   $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(B)/tests/test_util.o: tests/test_util.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CRIT_CFLAGS) -c -o $@ $<

$(B)/tests/%_test.o: tests/%_test.c
	@mkdir -p $(dir $@)
	@echo "  CC   $<"
	$(Q)$(CC) $(CFLAGS) $(CRIT_CFLAGS) -c -o $@ $<

$(B)/tests/%_test: $(B)/tests/%_test.o $(TU_OBJ) $(TEST_EXTRA) $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CRIT_LIBS) $(LDLIBS)

$(PORTABLE_SYS_OBJ): train/base/sys.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -DSPARTAN_FORCE_PORTABLE -c -o $@ $<

$(B)/tests/sys_portable_test.o: tests/sys_test.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CRIT_CFLAGS) -DSPARTAN_FORCE_PORTABLE -c -o $@ $<

$(B)/tests/sys_portable_test: $(B)/tests/sys_portable_test.o $(TU_OBJ) $(PORTABLE_SYS_OBJ) \
		$(filter-out $(B)/train/base/sys.o,$(LIB_OBJ))
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(CRIT_LIBS) $(LDLIBS)

$(B)/tests/bench_%: $(B)/tests/bench_%.o $(TU_OBJ) $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/fuzz/fuzz_%: $(B)/tests/fuzz/fuzz_%.o $(B)/tests/fuzz/fuzz.o $(FUZZ_DRIVER) $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/fuzz/seed_ckpt: $(B)/tests/fuzz/seed_ckpt.o $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(TEST_HELPER_BIN): $(B)/tests/insider_peer.o $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Tests run from the repo root with bin/spartan built (some tests run it as a process). The
# build runs in a second make, so that pkg-config sees what deps-test has just installed.
test: deps-test
	@$(MAKE) --no-print-directory run-tests

run-tests: check-deps-test lint $(SPARTAN) $(TEST_BIN) $(FUZZ_BIN) $(TEST_HELPER_BIN)
	@SPARTAN_BIN=$(SPARTAN) FUZZ_BIN_DIR=$(B)/tests/fuzz INSIDER_PEER=$(TEST_HELPER_BIN) \
		$(SHELL) scripts/run-tests $(TEST_BIN) $(TEST_SH)

# make test-arm64: cross-build for linux-arm64 and run the suites of ARM64_TESTS under qemu-user,
# each bounded by ARM64_TIMEOUT seconds. These are the portable core, where x86-only code
# (intrinsics, byte order, signed char) would show: the kernels, the model against the PyTorch
# fixture, the KV-cache decoder, the tokenizer and the wire format, plus the two on-disk formats
# (token shards, checkpoints) and SPARTA's index sets, which peers on both architectures must
# derive alike. Each suite takes 4-7 s under qemu (most of it starting qemu once per test). The
# peer, serving and multi-process suites are left out: they test sockets and processes more than
# the CPU. A missing cross toolchain, qemu or sysroot (no apt, no network) is a skip with the
# reason, as for the other optional tests; a failing test fails.
ARM64_TESTS ?= ops gpt kv tok wire data ckpt select
ARM64_TIMEOUT ?= 300
ARM64_BIN := $(ARM64_TESTS:%=$(B_ARM64)/tests/%_test)
test-arm64:
	@for t in aarch64-linux-gnu-gcc qemu-aarch64 timeout; do command -v $$t >/dev/null 2>&1 || \
		{ echo "test-arm64: skipped: no $$t (scripts/install-deps test)"; exit 0; }; done; \
	out=$$($(SHELL) scripts/arm64-sysroot $(ARM64_SYSROOT) 2>&1); rc=$$?; printf '%s\n' "$$out"; \
	if [ $$rc != 0 ]; then echo "test-arm64: skipped: $$(printf '%s\n' "$$out" | \
		sed -n '$$s/^arm64-sysroot: //p')"; exit 0; fi; \
	$(MAKE) --no-print-directory VARIANT=arm64 run-tests-arm64

# The suites that run bin/spartan run the arm64 build/arm64/spartan, through qemu: tests start it
# with a shell command line.
run-tests-arm64: $(SPARTAN) $(ARM64_BIN)
	@q=$$(command -v qemu-aarch64); ARM64_QEMU=$$q QEMU_LD_PREFIX=$(ARM64_CROSS_ROOT) \
		SPARTAN_BIN="$$q $(SPARTAN)" TEST_RUNNER="timeout $(ARM64_TIMEOUT) $$q" \
		$(SHELL) scripts/run-tests $(ARM64_BIN)

sanitize:
	@LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp $(MAKE) --no-print-directory VARIANT=asan test

# Criterion cannot start under TSan, so the threaded code has a plain stress program.
tsan:
	@$(MAKE) --no-print-directory VARIANT=tsan build/tsan/tests/stress_sparta build/tsan/tests/stress_diloco
	@TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" build/tsan/tests/stress_sparta
	@TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" build/tsan/tests/stress_diloco

$(B)/tests/stress_%: $(B)/tests/stress_%.o $(TU_OBJ) $(LIB_OBJ)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# make fuzz: the harnesses built with clang's libFuzzer, ASan and UBSan into build/fuzz/, then
# each run for FUZZ_TIME seconds, one after the other (scripts/run-fuzz: the seeds of
# tests/fuzz/corpus/<name>/, new inputs and crash files under build/fuzz/, a table at the end).
fuzz:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { echo "fuzz: needs clang with libFuzzer: $(FUZZ_CC) not found (set FUZZ_CC)"; exit 1; }
	@$(MAKE) --no-print-directory VARIANT=fuzz fuzz-build
	@FUZZ_TIME=$(FUZZ_TIME) $(SHELL) scripts/run-fuzz build/fuzz $(FUZZ_SRC)

fuzz-build: $(FUZZ_BIN)

# make fuzz-seeds: the seed checkpoints of fuzz_ckpt, written by the checkpoint code itself.
fuzz-seeds: $(B)/tests/fuzz/seed_ckpt
	@mkdir -p tests/fuzz/corpus/fuzz_ckpt && $(B)/tests/fuzz/seed_ckpt tests/fuzz/corpus/fuzz_ckpt

bench: check-deps $(SPARTAN) $(BENCH_BIN)
	@SPARTAN_BIN=$(SPARTAN) $(SHELL) scripts/run-bench $(BENCH_BIN) $(BENCH_SH)

run: deps
	@$(MAKE) --no-print-directory all
	@$(SHELL) scripts/quickstart

deps:
	@$(SHELL) scripts/install-deps run

deps-test:
	@$(SHELL) scripts/install-deps test

fixtures:
	@/usr/bin/python3 scripts/make-fixtures

# The layer table and the include rules are in scripts/check-layers. clang-format's output
# differs between major versions; the format is checked when clang-format is installed.
lint:
	@$(SHELL) scripts/check-layers
	@if command -v clang-format >/dev/null 2>&1; then \
		clang-format --dry-run -Werror $$(find $(SRC_DIRS) tests -name '*.[ch]' | sort); \
	else echo "lint: clang-format not found: the format is not checked (scripts/install-deps test)"; fi

clean:
	rm -rf build bin

# The arm64 sysroot holds folders named *.d (etc/gss/mech.d) that are no dependency files.
-include $(shell find build -path build/arm64/sysroot -prune -o -name '*.d' -type f -print 2>/dev/null)
