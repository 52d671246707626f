"""How long a fresh clone's `make test` takes, step by step: setup, browser, arm64 build, ruff, pytest.

    python benchmarks/test_time.py                  # the committed HEAD, empty caches (a fresh machine)
    python benchmarks/test_time.py --rev v0.1.0     # any other commit, to compare
    python benchmarks/test_time.py --warm           # the machine's own pip and compiler caches
                                                    # (a second clone on a machine that built before)

The commit is cloned into a temporary folder with no venv and no llama.cpp build. Each step of
`make test` runs on its own under `/usr/bin/time -v`, in make's order, so the table says where the
time goes. Without --warm, pip and ccache get empty cache folders, as on a fresh machine. The
Debian packages the browser and arm64 steps install (chromium, the cross compiler, qemu, ccache)
are installed once per machine: remove them first (`apt-get purge`) to time that part too. pytest
prints its 25 slowest tests. Run it alone: a second job on the same two cores slows every step.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from setup_time import fresh_clone  # benchmarks/ is on the path when this script runs

# make test's steps, in its order; ruff and pytest are the recipe's own lines
STEPS = [
    ("setup", "make setup"),
    ("browser", "make browser"),
    ("arm64 build", "make phone-setup"),
    ("ruff", "ruff check . && ruff format --check ."),
    ("pytest", "pytest -q --durations=25"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="commit to test (default: HEAD)")
    ap.add_argument("--warm", action="store_true", help="use this machine's pip and ccache caches")
    ap.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgetune-test-"))
    clone, env = fresh_clone(args.rev, work, caches=not args.warm)
    env["PATH"] = os.pathsep.join([str(clone / ".venv" / "bin"), env["PATH"]])  # ruff and pytest of the clone
    env["DVC_NO_ANALYTICS"] = "1"
    print(f"make test, step by step, in a fresh clone of {args.rev} ({clone})", flush=True)

    rows = []
    for name, command in STEPS:
        log = work / f"{name.replace(' ', '-')}.log"
        with open(log, "w") as out:
            rc = subprocess.run(
                ["/usr/bin/time", "-v", "bash", "-c", command],
                cwd=clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
        text = log.read_text()
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text).group(1)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
        rows.append((name, _seconds(wall), rss / 1024 / 1024))
        print(f"  {name:12s} {_seconds(wall):7.0f} s  peak {rows[-1][2]:5.1f} GiB  exit {rc}  ({log})", flush=True)
        if rc != 0:
            sys.exit(f"{name} failed (exit {rc}); its log: {log}")

    print("\n| step | seconds | minutes | peak RSS (GiB) |\n|---|---:|---:|---:|")
    for name, s, gib in rows:
        print(f"| {name} | {s:.0f} | {s / 60:.1f} | {gib:.1f} |")
    total = sum(s for _, s, _ in rows)
    print(f"| **make test** | **{total:.0f}** | **{total / 60:.1f}** | |")
    slowest = (work / "pytest.log").read_text().split("slowest 25 durations")
    if len(slowest) > 1:
        print("\nslowest 25 durations" + slowest[1].split("\n\n")[0])
    if args.keep:
        print(f"clone kept: {clone}")
    else:
        subprocess.run(["rm", "-rf", str(work)])


def _seconds(wall: str) -> float:
    """`/usr/bin/time`'s h:mm:ss or m:ss.ss as seconds."""
    parts = [float(p) for p in wall.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


if __name__ == "__main__":
    main()
