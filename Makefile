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

.PHONY: all deps configure build test test-unit test-pg demo bench profile format clean

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
