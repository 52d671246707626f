"""Where the pinned llama.cpp lives: its converter source and the tools built from it.

`scripts/build_llama_cpp.sh` builds both into build/llama.cpp (or $LLAMA_CPP_DIR, as the
container sets it), libllama among the tools. The llama-cpp-python bindings carry no library of
their own: `bind_library` points them at that one, so the Python scores and the tools run the same
compiled code.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import atomic_path


def home() -> Path:
    """$LLAMA_CPP_DIR, else build/llama.cpp here, else the one beside this source checkout: DVC runs
    queued and --temp experiments in a copy of the repository without the (git-ignored) build."""
    if "LLAMA_CPP_DIR" in os.environ:
        return Path(os.environ["LLAMA_CPP_DIR"]).resolve()
    here, checkout = Path("build/llama.cpp").resolve(), Path(__file__).resolve().parents[2] / "build" / "llama.cpp"
    return here if here.is_dir() or not checkout.is_dir() else checkout


def bind_library() -> None:
    """Tell llama-cpp-python where libllama is; it reads LLAMA_CPP_LIB_PATH (MTMD_CPP_LIB for its
    multimodal part) when first imported. A path the user set wins."""
    lib = home() / "cmake" / "bin"
    if any(lib.glob("libllama.*")):
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(lib))
        os.environ.setdefault("MTMD_CPP_LIB", str(lib))


def source() -> Path:
    src = home() / "src"
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise EdgetuneError(
            f"{src}: llama.cpp source not found. Build it with scripts/build_llama_cpp.sh (make setup)."
        )
    return src


def tool(name: str) -> Path:
    for path in (home() / "cmake" / "bin" / name, home() / "bin" / name):
        if path.is_file():
            return path
    raise EdgetuneError(f"{name}: not found under {home()}. Build it with scripts/build_llama_cpp.sh (make setup).")


# Debian's cross sysroot: the aarch64 libc and libstdc++ the cross-built tools link against
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def arm_tool(name: str) -> list:
    """A tool of the aarch64 build (`scripts/build_llama_cpp.sh aarch64`), as the command line that
    runs it here under user-mode emulation."""
    path = home() / "aarch64" / "cmake" / "bin" / name
    if not path.is_file() or shutil.which(QEMU[0]) is None:
        raise EdgetuneError(
            f"{name}: no aarch64 build under {path.parent}, or no {QEMU[0]}. Install the cross compiler and "
            "qemu and build it with `make phone-setup`."
        )
    return [*QEMU, path]


def run(cmd: list, what: str, cwd: Path | None = None) -> str:
    """Run a llama.cpp tool or script; on failure show its own last words."""
    # errors="replace": a tool that prints generated text may cut a character in two at its last token
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise EdgetuneError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout + proc.stderr


def convert_checkpoint(checkpoint: Path, out: Path, outtype: str = "f16") -> None:
    """An HF checkpoint to a GGUF file with llama.cpp's own convert_hf_to_gguf.py, written atomically."""
    script = source() / "convert_hf_to_gguf.py"
    print(f"converting {checkpoint} -> {out} ({outtype}) with {script}", flush=True)
    with atomic_path(out, ".gguf") as tmp:
        # The script puts its own gguf-py first on sys.path, so converter and format match.
        run(
            [sys.executable, script, checkpoint, "--outtype", outtype, "--outfile", tmp],
            f"convert_hf_to_gguf.py on {checkpoint}",
        )
