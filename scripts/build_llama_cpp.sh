#!/usr/bin/env bash
# Build the one pinned llama.cpp, once: the tools and the shared libllama, from the llama.cpp
# source that the llama-cpp-python sdist vendors. The bindings are packed from the same sdist
# without a library of their own (LLAMA_BUILD=OFF: nothing compiles); edgetune points them at the
# libllama built here (LLAMA_CPP_LIB_PATH, set by edgetune/llamacpp.py). The converter runs from
# the same source tree. Results are cached in $LLAMA_CPP_DIR and reused when version and flags match.
#
#   scripts/build_llama_cpp.sh                       # CPU build on the host
#   LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;90" \
#       scripts/build_llama_cpp.sh                   # CUDA build (the container does this)
#
# Environment: PYTHON (default: python3), LLAMA_CPP_DIR (default: build/llama.cpp),
# LLAMA_CMAKE_ARGS (extra CMake flags), JOBS (default: all cores).
set -euo pipefail

VERSION=0.3.36   # llama-cpp-python; pins the llama.cpp commit it vendors
PYTHON=${PYTHON:-python3}
DIR=${LLAMA_CPP_DIR:-build/llama.cpp}
CMAKE_FLAGS="-DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
if [[ "$(uname -m)" == x86_64 ]]; then
  # -march=native compiles ggml's AMX kernels in on Xeons that have AMX; at the pinned commit they
  # segfault decoding a Q8_0 batch (llama.cpp #20824; #16315: wrong Q4_0 results). Phones have
  # no AMX either, so leaving it out also keeps CPU figures closer to theirs.
  CMAKE_FLAGS="$CMAKE_FLAGS -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"
fi
CMAKE_FLAGS="$CMAKE_FLAGS ${LLAMA_CMAKE_ARGS:-}"
JOBS=${JOBS:-$(nproc)}
# llama-completion also answers in a chat (-cnv); llama-cli would add the server and 95 s to the compile
TOOLS="llama-quantize llama-imatrix llama-perplexity llama-bench llama-completion"
STAMP="$VERSION $CMAKE_FLAGS"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"

if [[ ! -f "$SDIST" ]]; then
  echo "== fetching llama-cpp-python $VERSION sdist"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DIR"
fi

if [[ ! -f "$DIR/src/convert_hf_to_gguf.py" ]]; then
  echo "== unpacking the vendored llama.cpp source"
  rm -rf "$DIR/src" "$DIR/unpack" && mkdir -p "$DIR/unpack"
  tar xzf "$SDIST" -C "$DIR/unpack"
  mv "$DIR/unpack/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DIR/src"
  rm -rf "$DIR/unpack"
fi

if [[ "$(cat "$DIR/wheel.stamp" 2>/dev/null)" != "$VERSION" ]] || ! ls "$DIR"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "== packing the llama-cpp-python bindings (Python only; the library is the one built below)"
  rm -rf "$DIR/wheels"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$DIR/wheels" "$SDIST"
  echo "$VERSION" > "$DIR/wheel.stamp"
fi

missing_tool() {
  local tool
  for tool in $TOOLS; do [[ -x "$DIR/cmake/bin/$tool" ]] || return 0; done
  [[ -f "$DIR/cmake/bin/libllama.so" || -f "$DIR/cmake/bin/libllama.dylib" ]] || return 0
  return 1
}

if [[ "$(cat "$DIR/tools.stamp" 2>/dev/null)" != "$STAMP" ]] || missing_tool; then
  echo "== building llama.cpp: libllama and $TOOLS (about 5 minutes on 2 cores)"
  # shellcheck disable=SC2086
  cmake -S "$DIR/src" -B "$DIR/cmake" -DCMAKE_BUILD_TYPE=Release $CMAKE_FLAGS >/dev/null
  # shellcheck disable=SC2086
  cmake --build "$DIR/cmake" --config Release -j "$JOBS" --target llama $TOOLS
  echo "$STAMP" > "$DIR/tools.stamp"
fi

echo "llama.cpp $VERSION ready: tools and libllama in $DIR/cmake/bin, bindings in $DIR/wheels, converter in $DIR/src"
