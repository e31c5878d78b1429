# Each target does one thing. `make test` and `make demo` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install build-dev test test-rust test-python test-avx2 lint check-stubs check-aarch64 \
	check-workflows check-llamacpp llama-cpp demo demo-kernels bench bench-gemm bench-gguf clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## the venv with every dev requirement

build-dev: install ## build the extension (release, runtime ISA dispatch) into the venv
	$(BIN)/maturin develop --release -q

test-rust: ## the kernels, without Python
	cargo test --release

llama-cpp: install ## llama.cpp's reference tools (pinned sdist from PyPI, cached; about 3 minutes cold on 2 cores)
	$(BIN)/python scripts/llama_cpp.py build

# The tests that run llama.cpp itself (its tools, or ggml's quantizers built from its sources)
# as the reference.
LLAMACPP_TESTS := tests/test_llamacpp.py tests/test_ggml_oracle.py tests/test_gguf_kquant_affine.py \
	tests/test_gguf_kquant_sym.py tests/test_gguf_mixes.py tests/test_gguf_requantize.py \
	tests/test_imatrix.py tests/test_gguf_gptq.py tests/test_gguf_convert_llamacpp.py

test-python: build-dev ## the Python tests but the llama.cpp comparisons
	$(BIN)/python -m pytest -q tests $(addprefix --ignore=,$(LLAMACPP_TESTS))

check-llamacpp: build-dev llama-cpp ## GGUF files, quantizers, mixes and imatrix against llama.cpp itself
	$(BIN)/python -m pytest -q $(LLAMACPP_TESTS)

test: test-rust test-python check-llamacpp ## the whole test suite

# The tests whose oracles sum in float32 through BLAS (NumPy matmul / einsum), as an AVX2
# machine runs them: OpenBLAS's Haswell kernels and qfast's AVX2 path (1 to 3 minutes on 2 cores).
AVX2_TESTS := tests/test_awq.py tests/test_bert.py tests/test_gptq.py tests/test_hqq.py \
	tests/test_linear.py tests/test_layer_error.py tests/test_llama.py tests/test_evaluate.py \
	tests/test_checkpoint.py tests/test_real_models.py tests/test_quantize_model.py
test-avx2: build-dev ## the BLAS-comparing tests under OPENBLAS_CORETYPE=Haswell QFAST_ISA=avx2
	OPENBLAS_CORETYPE=Haswell QFAST_ISA=avx2 $(BIN)/python -m pytest -q $(AVX2_TESTS)

check-stubs: build-dev ## the .pyi stubs against the compiled module
	$(BIN)/python -m mypy.stubtest qfast._qfast --allowlist .ci/stubtest-allowlist.txt

lint: install ## formatting, clippy, ruff, mypy, stubs
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/python -m mypy python/qfast
	$(MAKE) check-stubs

check-aarch64: ## the kernels' tests for aarch64 under QEMU (NEON with and without dotprod)
	bash scripts/aarch64.sh

check-workflows: install ## validate the GitHub workflows offline
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

DEMO_OUT ?= smollm2-gptq-w4g64
demo: build-dev ## the main job: fetch SmolLM2-135M, GPTQ 4-bit g64 on 128 x 512 tokens, evaluate vs float (a few minutes)
	$(BIN)/qfast quantize SmolLM2-135M-Instruct -o $(DEMO_OUT) --overwrite \
		--method gptq --bits 4 --group-size 64 --asymmetric --act-order --eval

demo-kernels: build-dev ## quantize all-MiniLM-L6-v2's weights; error and speed vs NumPy
	$(BIN)/qfast demo

bench: build-dev ## the microbenchmarks (slow); JSON in .benchmarks/
	$(BIN)/python -m pytest benches --benchmark-enable --benchmark-only \
		--benchmark-json=.benchmarks/latest.json -p no:randomly -q

bench-gemm: build-dev ## matmul_int8 and linear against NumPy / ONNX Runtime (about 15 minutes)
	$(BIN)/python -m pytest benches/test_matmul.py benches/test_linear.py --benchmark-enable \
		--benchmark-only --benchmark-json=.benchmarks/gemm.json -p no:randomly -q

bench-gguf: build-dev ## GGUF quantize / dequantize against gguf-py and X.copy() (about 6 minutes)
	$(BIN)/python -m pytest benches/test_gguf.py --benchmark-enable --benchmark-only \
		--benchmark-json=.benchmarks/gguf.json -p no:randomly -q

clean:
	rm -rf target $(VENV) .pytest_cache .benchmarks
