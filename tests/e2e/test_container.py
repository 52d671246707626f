"""The GPU path's files: the Dockerfile lints clean, the compose file and the workflows validate
against their published schemas and say what they must, the accelerate config loads, and the
llama.cpp build script reuses its cache and leaves out the AMX kernels."""

import ctypes
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib
import yaml
from conftest import REPO

from edgetune.gguf import llamacpp

BIN = Path(sys.executable).parent


def run(*cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, **kwargs)


def test_dockerfile_passes_hadolint():
    proc = run(BIN / "hadolint", "--config", REPO / ".hadolint.yaml", "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_ignored_hadolint_rule_is_justified():
    text = (REPO / ".hadolint.yaml").read_text()
    lines = text.splitlines()
    for rule in yaml.safe_load(text).get("ignored", []):
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[at - 1].strip().startswith("#"), f"{rule} is ignored without a reason above it"


def test_dockerfile_builds_llama_cpp_with_cuda_by_the_host_script():
    text = (REPO / "Dockerfile").read_text()
    assert "ARG CUDA_VERSION" in text and "ARG UBUNTU_VERSION" in text and "ARG CUDA_ARCHITECTURES" in text
    assert "scripts/build_llama_cpp.sh" in text
    for flag in ("-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF", "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}"):
        assert flag in text
    # llama.cpp before the dependencies before the code: a code change rebuilds neither
    order = [
        text.index(s)
        for s in ("COPY scripts/build_llama_cpp.sh", "COPY pyproject.toml", "COPY --chown=edgetune:edgetune . ")
    ]
    assert order == sorted(order)
    assert "USER 1000:1000" in text and 'CMD ["dvc", "repro"]' in text and "VOLUME" in text


def test_the_image_installs_the_dependencies_the_remote_plugins_and_the_dialogue_corpus():
    """The Dockerfile's requirements line, run here on pyproject.toml as the shell would pass it."""
    text = (REPO / "Dockerfile").read_text()
    snippet = re.search(r'python -c "(.*?)" > /tmp/requirements.txt', text, re.S).group(1)
    snippet = snippet.replace("\\\n", "").replace("/tmp/pyproject.toml", str(REPO / "pyproject.toml"))
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wanted = proc.stdout.splitlines()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in wanted and "llama-cpp-python==0.3.36" in wanted
    assert (
        {"dvc-s3==3.3.0", "dvc-ssh==4.3.0", "chatterbot-corpus==1.3.3"}
        <= set(wanted)
        == {
            *project["dependencies"],
            *project["optional-dependencies"]["remote"],
            *project["optional-dependencies"]["dialogue"],
        }
    )


def test_compose_file_validates_and_reserves_the_gpu():
    proc = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gpu = compose["services"]["pipeline"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert {"HF_TOKEN", "HF_ENDPOINT"} <= set(gpu["environment"])
    assert ".:/workspace" in gpu["volumes"] and set(compose["volumes"]) == {"dvc-cache", "hf-cache"}
    cpu = compose["services"]["pipeline-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu


def test_workflows_validate_and_do_what_the_readme_says():
    workflows = REPO / ".github" / "workflows"
    proc = run(
        BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *sorted(workflows.glob("*.yml"))
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    gpu = yaml.safe_load((workflows / "gpu-pipeline.yml").read_text())
    assert "pull_request" in gpu[True]  # YAML 1.1 reads the `on:` key as True
    assert gpu["concurrency"]["group"] and gpu["concurrency"]["cancel-in-progress"] is False
    job = gpu["jobs"]["reproduce"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"]) and job["timeout-minutes"] > 0
    steps = "\n".join(str(s.get("run", "")) + str(s.get("with", "")) for s in job["steps"])
    for needle in (
        "cache-from",
        "dvc repro",
        "dvc exp run --pull --allow-missing",
        "dvc metrics diff origin/main --md",
        "dvc params diff origin/main --md",
        "reports/summary.md",
        "dvc plots diff",
        "GITHUB_STEP_SUMMARY",
    ):
        assert needle in steps, needle

    tests = yaml.safe_load((workflows / "tests.yml").read_text())
    assert any(s.get("run") == "make test" for s in tests["jobs"]["tests"]["steps"])
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(REPO / "configs" / "accelerate.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and config.num_machines == 1


def test_build_script_reuses_its_cached_cpu_build():
    stamp = (llamacpp.home() / "tools.stamp").read_text()
    proc = run("bash", "scripts/build_llama_cpp.sh", env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stdout and "ready" in proc.stdout  # nothing rebuilt
    assert (llamacpp.home() / "tools.stamp").read_text() == stamp and (
        llamacpp.home() / "cmake" / "bin" / "llama-quantize"
    ).is_file()


def test_the_bindings_run_the_library_built_with_the_tools():
    """One compile: llama-cpp-python ships no libllama and loads the one beside the tools."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    assert Path(bindings._lib._name).resolve() == (llamacpp.home() / "cmake" / "bin" / "libllama.so").resolve()
    assert not list(Path(llama_cpp.__file__).parent.glob("lib/libllama*"))
    wheels = list((llamacpp.home() / "wheels").glob("llama_cpp_python-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        assert len(wheels) == 1 and not [n for n in wheel.namelist() if n.endswith((".so", ".dylib", ".dll"))]


def test_the_cpu_builds_leave_out_ggmls_amx_kernels():
    """They segfault on Q8_0 at the pinned commit: neither the bindings nor the tools may hold them."""
    import llama_cpp

    tools = ctypes.CDLL(str(llamacpp.home() / "cmake" / "bin" / "libggml-cpu.so"))
    assert tools.ggml_cpu_has_amx_int8() == 0
    assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
