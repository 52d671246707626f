"""What made the numbers besides the params: the code's commit, the software and the machine.

The report records it (reports/environment.json and a line of summary.md) and the exported model
card carries it, so two runs whose figures differ can be told apart even when their params agree.
It describes the machine that ran the report; in one `dvc repro` that is the machine of every stage.
"""

import importlib.metadata
import os
import platform
import re
import subprocess

from edgetune.gguf import llamacpp

# The libraries whose versions move the figures: training, conversion, inference, metrics, DVC.
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "gguf",
    "llama-cpp-python",
    "scikit-learn",
    "dvc",
    "dvclive",
)


def git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True)
    except FileNotFoundError:  # no git on the machine
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit() -> str | None:
    """The checked-out commit (of an experiment: its baseline; the params say what it changed)."""
    return git("rev-parse", "--short", "HEAD")


def code_changed() -> bool | None:
    """Whether the code under src/ differs from that commit: then the commit alone does not say what ran."""
    status = git("status", "--porcelain", "--", "src")
    return None if status is None else bool(status)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The instruction sets ggml found and uses (AVX512_BF16 and the like set the CPU speeds)."""
    import llama_cpp

    return re.findall(r"(\w+) = 1", llama_cpp.llama_print_system_info().decode())


def gpu() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "cuda": torch.version.cuda}


def llama_cpp_tools() -> dict | None:
    """The pinned source and build flags of the llama.cpp tools, as their build script stamped them."""
    stamp = llamacpp.home() / "tools.stamp"
    if not stamp.is_file():
        return None
    version, _, flags = stamp.read_text().strip().partition(" ")
    return {"source": f"llama-cpp-python {version}", "cmake_flags": flags}


def describe() -> dict:
    return {
        "commit": commit(),
        "code_changed": code_changed(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),  # what the stages take for "all threads"
        "cpu_features": cpu_features(),
        "gpu": gpu(),
        "llama_cpp_tools": llama_cpp_tools(),
        "packages": package_versions(),
    }


FOOTER = "\n---\n\n"  # sets the environment line off the end of summary.md (the model card moves it)


def one_line(env: dict) -> str:
    """The environment in a sentence, for summary.md and the model card."""
    versions = ", ".join(
        f"{name} {version}"
        for name, version in env["packages"].items()
        if version and name in ("torch", "transformers", "peft", "trl", "llama-cpp-python")
    )
    accelerator = (
        f"{env['gpu']['count']} × {env['gpu']['name']} (CUDA {env['gpu']['cuda']})" if env["gpu"] else "no GPU"
    )
    bf16 = " with AVX512_BF16" if "AVX512_BF16" in env["cpu_features"] else ""
    tools = env["llama_cpp_tools"]
    built = (
        f"built from {tools['source']}'s source" + (" with CUDA" if "GGML_CUDA=ON" in tools["cmake_flags"] else "")
        if tools
        else "of an unknown build"
    )
    changes = " (with uncommitted changes to src/)" if env["code_changed"] else ""
    return (
        f"Made at commit {env['commit'] or 'unknown'}{changes} with {versions} and llama.cpp tools {built}; "
        f"Python {env['python']} on {env['cpu_count']} × {env['cpu']}{bf16}, {accelerator}."
    )
