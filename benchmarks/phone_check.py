"""How long the phone check takes: the arm64 cross build from nothing, then `edgetune phone-check`.

    python benchmarks/phone_check.py              # both (after `make phone-setup` installed the compiler)
    python benchmarks/phone_check.py --no-build   # the check only, on the cached build

The build goes to a temporary LLAMA_CPP_DIR that holds only the pinned sdist, so nothing cached
is reused. The check runs on the cached build (the same flags), on deploy/ with params.yaml's
`phone` section, and writes to a temporary file, leaving reports/phone.json as it is. Run it
alone: qemu runs the arm code on every core there is.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="time the check alone, on the cached build")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetune-phone-") as tmp:
        figures = {}
        if not args.no_build:
            home = Path(tmp) / "llama.cpp"
            home.mkdir()
            for sdist in (REPO / "build" / "llama.cpp").glob("llama_cpp_python-*.tar.gz"):
                shutil.copy(sdist, home)  # the pinned source, not its build
            env = {**os.environ, "LLAMA_CPP_DIR": str(home)}
            figures["cross build (s)"] = timed(["scripts/build_llama_cpp.sh", "aarch64"], env)
        out = Path(tmp) / "phone.json"
        figures["phone-check (s)"] = timed(["edgetune", "phone-check", "--out", str(out)])
        result = json.loads(out.read_text())
        for build, seconds in result["kld"]["seconds"].items():
            figures[f"  llama-perplexity {build} (s)"] = seconds
        for build, speed in result["tokens_per_second"].items():
            if isinstance(speed, dict):
                figures[f"  prompt tok/s {build}"] = speed["prompt"]
    for name, value in figures.items():
        print(f"{name:32} {value:8.1f}")


if __name__ == "__main__":
    main()
