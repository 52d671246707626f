"""How long `make setup` takes on a fresh clone, and how many times it compiles llama.cpp.

    python benchmarks/setup_time.py                 # the committed HEAD
    python benchmarks/setup_time.py --rev v0.1.0    # any other commit, to compare

The commit is cloned into a temporary folder and set up there from nothing: its own venv, an
empty pip cache (a fresh machine has none) and no llama.cpp build. `/usr/bin/time -v` measures
the whole `make setup`; each step make starts and each `==` line of the build script is timed as
it arrives. Run it
alone: a second job on the same cores slows the compile down by as much as it takes.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# One line per object cmake compiles; llama.cpp's own source file stands for the library.
COMPILED_LLAMA = re.compile(r"Building CXX object \S*llama\.dir/llama\.cpp\.o")
STEP = ("== ", "test -x", ".venv/bin/", "PYTHON=", "scripts/", "touch")  # what the build script and make print


def fresh_clone(rev: str, work: Path, caches: bool = True) -> tuple[Path, dict]:
    """`rev` cloned into work/edgetune, and the environment to set it up in: this machine's settings
    (package indexes, certificates), less any active venv and, with `caches`, its caches (empty
    folders under `work` instead, as on a fresh machine)."""
    clone = work / "edgetune"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", rev], check=True)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "activate").exists()]
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PATH": os.pathsep.join(path)}
    if caches:
        env.update({"PIP_CACHE_DIR": str(work / "pip-cache"), "npm_config_cache": str(work / "npm-cache")})
        env["CCACHE_DIR"] = str(work / "ccache")
    return clone, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="commit to set up (default: HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgetune-setup-"))
    clone, env = fresh_clone(args.rev, work)
    log = work / "setup.log"
    print(f"make setup in a fresh clone of {args.rev} ({clone})", flush=True)

    phases, start = [], time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["/usr/bin/time", "-v", "make", "setup"],
            cwd=clone,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=1,
        )
        for line in proc.stdout:
            out.write(line)
            if line.startswith(STEP):
                phases.append((time.monotonic() - start, line.removeprefix("== ").strip()[:100]))
                print(f"  {phases[-1][0]:6.0f} s  {phases[-1][1]}", flush=True)
        proc.wait()
    text = log.read_text()
    if proc.returncode != 0:
        sys.exit(f"make setup failed (exit {proc.returncode}); its log: {log}")

    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text).group(1)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    bundled = list((clone / ".venv").glob("lib/python3*/site-packages/llama_cpp/lib/libllama*"))
    print(f"wall clock (make setup):      {wall}  (m:ss)")
    print(f"peak memory of one process:   {rss / 1024:.0f} MiB")
    print(f"llama.cpp compiled (tools):   {len(COMPILED_LLAMA.findall(text))} time(s)")
    print(f"libllama inside the bindings: {len(bundled)} file(s)")
    print(f"log: {log}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(clone / ".venv"), str(clone / "build"), str(work / "pip-cache")])


if __name__ == "__main__":
    main()
