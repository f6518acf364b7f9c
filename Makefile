# A thin wrapper over CMake.
#   make run    set up, build, fetch the default model, run the main job: `tandem generate` on
#               examples/prompts.jsonl (completions as JSON lines on stdout)
#   make bench  the forward-pass benchmark on the default model (bench/bench_forward)
#   make test   set up, build, run every test: an ASan/UBSan build with clang (with a short
#               libFuzzer run), a ThreadSanitizer build of the device and pipeline tests, then
#               the release build with gcc (CUDA plugin included when nvcc is present)
#   make bench-attention   the decode-attention benchmark; bench-full: its full sweep
#   make bench-device      device GEMM and copy throughput (DEVICE=emu or cuda)
#   make format       clang-format every source
BUILD ?= build
BUILD_SAN ?= build-sanitize
BUILD_TSAN ?= build-tsan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# nvcc lives here on machines with the CUDA toolkit; CMake finds it on PATH
export PATH := $(PATH):/usr/local/cuda/bin

.PHONY: all setup build build-sanitize build-tsan run test bench bench-attention bench-full bench-device format clean
all: build

setup:
	@scripts/setup

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-sanitize: setup
	@cmake -S . -B $(BUILD_SAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
	    -DTANDEM_SANITIZE=ON -DTANDEM_FUZZ=ON -DTANDEM_CUDA=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD_SAN) -j $(JOBS)

# ThreadSanitizer: the device and pipeline tests only (libgomp is not
# instrumented: they run with one OpenMP thread; the concurrency under test
# is the device's streams and the host)
build-tsan: setup
	@cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
	    -DTANDEM_TSAN=ON -DTANDEM_CUDA=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD_TSAN) -j $(JOBS) --target test_device test_pipeline

run: build
	@scripts/fetch-model >/dev/null
	$(BUILD)/tools/tandem generate --input examples/prompts.jsonl --output - --temperature 0

bench: build
	@scripts/fetch-model >/dev/null
	$(BUILD)/bench/bench_forward

DEVICE ?= emu
bench-device: build
	@scripts/fetch-model >/dev/null
	$(BUILD)/bench/bench_device --device $(DEVICE)

bench-attention: build
	$(BUILD)/bench/bench_attention

bench-full: build
	$(BUILD)/bench/bench_attention --full

test: build-sanitize build-tsan build
	@echo "== tests, clang + ASan/UBSan ($(BUILD_SAN))"
	@cd $(BUILD_SAN) && ctest --output-on-failure -j $(JOBS)
	@echo "== device and pipeline tests, clang + ThreadSanitizer ($(BUILD_TSAN))"
	@cd $(BUILD_TSAN) && OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1" ctest --output-on-failure -R "test_device|test_pipeline"
	@echo "== tests, release ($(BUILD))"
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

format:
	@scripts/format

clean:
	rm -rf $(BUILD) $(BUILD_SAN) $(BUILD_TSAN)
