# The two set-up commands (README.md): `make demo` and `make test`. Both install what they need
# on a fresh Debian 12 machine (as root), configure, build, and start what they need.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)
CTEST_ARGS ?=

DEBIAN_PACKAGES := build-essential cmake ninja-build ccache pkg-config git \
  libpqxx-dev libpq-dev libssl-dev libcurl4-openssl-dev libboost-dev libboost-system-dev \
  nlohmann-json3-dev libspdlog-dev libfmt-dev prometheus-cpp-dev libcli11-dev \
  libgtest-dev libgmock-dev libbenchmark-dev \
  postgresql-15 postgresql-client-15 \
  python3 python3-cryptography python3-psycopg2 python3-boto3 python3-hvac bc \
  prometheus nodejs
# The openssl CLI makes the throwaway CA and server certificate of tests/harness/pg_ssl.cpp.
DEBIAN_PACKAGES += openssl
# cairo draws the PDF report (src/ops/pdf_report.h) with a DejaVu font; poppler's pdftotext,
# pdfinfo and pdftoppm read it back in tests/pdf_report_pg_test.cpp and render docs/report-page1.png.
DEBIAN_PACKAGES += libcairo2-dev fonts-dejavu-core poppler-utils

.PHONY: all deps configure build test test-unit test-pg test-asan test-tsan demo bench profile \
  format clean

all: build

deps:
	@./scripts/install-deps.sh $(DEBIAN_PACKAGES)

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

test-unit: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -L unit

test-pg: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -L pg

# Sanitizer builds (docs/operations.md, "Sanitizers"). -O1: the instrumented suite builds faster
# than at -O2 and, without sibling-call optimisation, its reports keep every frame. A report from
# any process, a test or a rekey child, fails the target (tests/sanitizers/run_ctest.sh).
SAN_CMAKE_FLAGS := -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g -DNDEBUG"

# The whole suite (every label) under AddressSanitizer and UndefinedBehaviorSanitizer.
test-asan: deps
	@cmake -S . -B build-asan $(SAN_CMAKE_FLAGS) -DREKEY_SANITIZE=address,undefined >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@./tests/sanitizers/run_ctest.sh asan build-asan -j $(JOBS) $(CTEST_ARGS)

# ThreadSanitizer for the tests of the threaded parts: the worker pool's claim loops, the KMS
# wrappers they share (rate limit, circuit breaker, retries, Vault login), the data key cache,
# the ops HTTP server and metrics, the pacer and the brakes (their polling and lock-watchdog
# threads), Secret, the audit writers, and the staged-job
# planner's reader and writer threads (planning_pg_test). The rekey binary
# these tests start is instrumented too, so `rekey work --concurrency 2` is checked end to end.
TSAN_TESTS := secret_test aes_gcm_test associated_data_test circuit_breaker_test \
  resilient_kms_test local_kms_provider_test vault_transit_test data_key_cache_test \
  http_server_test metrics_test pacer_test worker_pool_pg_test data_key_cache_pg_test \
  audit_chain_pg_test ops_endpoints_pg_test pacing_pg_test vault_transit_kms_test \
  vault_rotation_kms_test ops_readiness_kms_test aws_rotation_kms_test planning_pg_test \
  brake_test brakes_pg_test aws_kms_kms_test
empty :=
space := $(empty) $(empty)
test-tsan: deps
	@cmake -S . -B build-tsan $(SAN_CMAKE_FLAGS) -DREKEY_SANITIZE=thread >/dev/null
	@cmake --build build-tsan -j $(JOBS) --target rekey $(TSAN_TESTS)
	@./tests/sanitizers/run_ctest.sh tsan build-tsan -j $(JOBS) \
	  -R '^($(subst $(space),|,$(strip $(TSAN_TESTS))))$$' $(CTEST_ARGS)

demo: build
	@./scripts/demo.sh $(BUILD_DIR)/rekey

# rekey side by side with ../shared/anchors on a throwaway PostgreSQL (bench/README.md).
# BENCH_ROWS, BENCH_RUNS, BENCH_FULL=1 and the other BENCH_* variables tune it.
# pgbench (the application workload) ships in postgresql-15 (Debian's contrib is part of the
# server package), its /usr/bin wrapper in postgresql-client-common (postgresql-client-15).
bench: deps
	@./scripts/install-deps.sh time openssl postgresql-15 postgresql-client-15
	@cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build-release -j $(JOBS) --target rekey codec_bench
	@/usr/bin/python3 bench/run_bench.py build-release

# One worker under callgrind, and its statements per batch (bench/README.md, "Profile").
profile: build
	@./scripts/install-deps.sh valgrind
	@./bench/profile.sh $(BUILD_DIR)/rekey

# libFuzzer targets (tests/fuzz, docs/testing.md) with ASan and UBSan, FUZZ_SECONDS (default 60)
# each over their committed corpus and regressions; fails on any crash.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: deps
	@./scripts/install-deps.sh clang libclang-rt-14-dev
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DREKEY_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target fuzz_targets
	@FUZZ_SECONDS=$(FUZZ_SECONDS) ./tests/fuzz/run.sh build-fuzz

format:
	@git ls-files '*.cpp' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
