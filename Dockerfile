# edgetune on a GPU: one CUDA build of the pinned llama.cpp (the tools and the libllama that
# llama-cpp-python loads), the Python environment, and `dvc repro` as the default command.
#
#   docker build -t edgetune --build-arg CUDA_ARCHITECTURES="80;90" .
#   docker compose run --rm pipeline dvc repro
#
# Layers go from slowest to fastest-changing: llama.cpp (pinned version), then the Python
# dependencies (pyproject.toml), then the code. A code change rebuilds neither llama.cpp nor torch.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=24.04

# ---- build: llama.cpp tools and libllama with CUDA, the llama-cpp-python bindings ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake ninja-build python3 python3-dev python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --no-cache-dir --upgrade pip==25.3

# The same script the host runs, from the same pinned source; the driver library is linked at
# run time (the devel image has only its stubs), hence --allow-shlib-undefined.
COPY scripts/build_llama_cpp.sh /tmp/build_llama_cpp.sh
RUN LLAMA_CPP_DIR=/opt/llama.cpp PYTHON=/opt/venv/bin/python \
    LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" \
    /tmp/build_llama_cpp.sh \
    && rm -rf /opt/llama.cpp/cmake/CMakeFiles /opt/llama.cpp/*.tar.gz

# Python dependencies (torch with CUDA from PyPI, DVC's remote plugins, the dialogue corpus) before the code.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['remote'] + p['optional-dependencies']['dialogue']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --find-links /opt/llama.cpp/wheels -r /tmp/requirements.txt

# ---- runtime: the environment, the tools on PATH, a non-root user ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 git libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/llama.cpp /opt/llama.cpp
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/llama.cpp/cmake/bin:$PATH \
    LLAMA_CPP_DIR=/opt/llama.cpp \
    HOME=/home/edgetune \
    HF_HOME=/cache/huggingface \
    DVC_NO_ANALYTICS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/workspace/src

# Any user may run it: the GPU workflow runs the image as the runner's user, compose as
# $EDGETUNE_UID. The caches and HOME are writable by all (sticky, like /tmp), and git trusts the
# mounted repository whoever owns it.
RUN useradd --create-home --uid 1000 edgetune \
    && mkdir -p /cache/huggingface /workspace/.dvc/cache \
    && chown -R edgetune:edgetune /cache /workspace \
    && chmod 1777 /cache /cache/huggingface /workspace/.dvc/cache /home/edgetune \
    && git config --system --add safe.directory /workspace
COPY --chown=edgetune:edgetune . /opt/edgetune
RUN pip install --no-cache-dir --no-deps -e /opt/edgetune

USER 1000:1000
WORKDIR /workspace
# The repository is mounted here (its src/ comes first on PYTHONPATH, so edits apply without a
# rebuild); the hub cache and the DVC cache live in volumes that outlast the container.
VOLUME ["/cache/huggingface", "/workspace/.dvc/cache"]
CMD ["dvc", "repro"]
