"""Results pushed to a DVC remote once are pulled by a fresh clone, which reproduces nothing."""

import subprocess

from conftest import dvc, ran_stages


def test_another_machine_reuses_the_results_through_a_dvc_remote(changed, tmp_path):
    """What a shared remote and the GPU workflow rely on: results pushed once are pulled by a fresh
    clone, which then reproduces nothing, whether it pulls first or `dvc exp run --pull
    --allow-missing` fetches only what it needs."""
    dvc(changed, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    subprocess.run(["git", "add", "-A"], cwd=changed, check=True)
    subprocess.run(
        ["git", "-c", "user.name=edgetune", "-c", "user.email=edgetune@localhost", "commit", "-qm", "results"],
        cwd=changed,
        check=True,
    )
    assert "pushed" in dvc(changed, "push").stdout

    pulled, lazy = tmp_path / "pulled", tmp_path / "lazy"
    for clone in (pulled, lazy):
        subprocess.run(["git", "clone", "-q", str(changed), str(clone)], check=True)
    dvc(pulled, "pull")
    gguf = "models/gguf/tiny-q4_k_m.gguf"
    assert (pulled / gguf).read_bytes() == (changed / gguf).read_bytes()
    assert ran_stages(dvc(pulled, "repro").stdout) == set()

    assert ran_stages(dvc(lazy, "exp", "run", "--pull", "--allow-missing").stdout) == set()
    assert (lazy / "reports" / "metrics.json").read_bytes() == (changed / "reports" / "metrics.json").read_bytes()
