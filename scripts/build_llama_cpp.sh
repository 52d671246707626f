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
#   scripts/build_llama_cpp.sh aarch64               # the same source cross-built for arm64 phones,
#                                                    # static, into $LLAMA_CPP_DIR/aarch64 (make phone-setup)
#   scripts/build_llama_cpp.sh bindings              # only the source and the bindings' wheel (seconds):
#                                                    # `make setup` installs the dependencies while the tools compile
#
# Environment: PYTHON (default: python3), LLAMA_CPP_DIR (default: build/llama.cpp),
# LLAMA_CMAKE_ARGS (extra CMake flags), JOBS (default: all cores), CCACHE_DIR (default:
# ~/.cache/ccache). With ccache installed (`make setup` installs Debian's as root), every compile
# goes through it: a second clone on the same machine, or a rebuild after `make clean-build`,
# compiles nothing it compiled before.
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
TARGET_ARCH=${1:-host}

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LAUNCHER=""
if command -v ccache >/dev/null; then
  # Paths under $DIR are hashed relative to it, so clones in other folders share the cache
  export CCACHE_BASEDIR="$DIR" CCACHE_NOHASHDIR=true
  LAUNCHER="-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
fi
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

if [[ "$TARGET_ARCH" == aarch64 ]]; then
  # A phone's CPU: armv8.2-a with the dot-product instructions (every arm64 phone since about
  # 2018), one static binary per tool, no OpenMP and no llamafile kernels: the flags of the bundle's
  # Android recipe (edgetune/export.py), so qemu-aarch64 runs here the kernels a phone runs.
  command -v aarch64-linux-gnu-g++ >/dev/null || {
    echo "no aarch64 cross compiler: run \`make phone-setup\` (as root: apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
    exit 1
  }
  OUT="$DIR/aarch64"
  TOOLS="llama-perplexity llama-server"  # KL divergence; answers and log-probs over HTTP
  FLAGS="-DCMAKE_TOOLCHAIN_FILE=$OUT/toolchain.cmake -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod -DGGML_LLAMAFILE=OFF"
  FLAGS="$FLAGS -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  mkdir -p "$OUT"
  cat > "$OUT/toolchain.cmake" <<'CMAKE'
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
CMAKE
  built=yes
  for tool in $TOOLS; do [[ -x "$OUT/cmake/bin/$tool" ]] || built=no; done
  if [[ "$(cat "$OUT/tools.stamp" 2>/dev/null)" != "$VERSION $FLAGS" || $built == no ]]; then
    echo "== cross-building llama.cpp for aarch64: $TOOLS (about 8 minutes on 2 cores)"
    # shellcheck disable=SC2086
    cmake -S "$DIR/src" -B "$OUT/cmake" -DCMAKE_BUILD_TYPE=Release $FLAGS $LAUNCHER >/dev/null
    # shellcheck disable=SC2086
    cmake --build "$OUT/cmake" --config Release -j "$JOBS" --target $TOOLS
    echo "$VERSION $FLAGS" > "$OUT/tools.stamp"
  fi
  echo "llama.cpp $VERSION for aarch64 ready in $OUT/cmake/bin: $TOOLS"
  exit 0
fi

if [[ "$(cat "$DIR/wheel.stamp" 2>/dev/null)" != "$VERSION" ]] || ! ls "$DIR"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "== packing the llama-cpp-python bindings (Python only; the library is the one built below)"
  rm -rf "$DIR/wheels"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$DIR/wheels" "$SDIST"
  echo "$VERSION" > "$DIR/wheel.stamp"
fi
if [[ "$TARGET_ARCH" == bindings ]]; then
  echo "llama-cpp-python $VERSION bindings ready in $DIR/wheels"
  exit 0
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
  cmake -S "$DIR/src" -B "$DIR/cmake" -DCMAKE_BUILD_TYPE=Release $CMAKE_FLAGS $LAUNCHER >/dev/null
  # shellcheck disable=SC2086
  cmake --build "$DIR/cmake" --config Release -j "$JOBS" --target llama $TOOLS
  echo "$STAMP" > "$DIR/tools.stamp"
fi

echo "llama.cpp $VERSION ready: tools and libllama in $DIR/cmake/bin, bindings in $DIR/wheels, converter in $DIR/src"
