"""The tiny run's bundle: it runs in llama.cpp itself, can ship the merged file instead of the
adapter, and answers alike on an arm64 build under qemu (`make phone-check`)."""

import importlib.metadata
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import dvc, ran_stages, read, set_params

from edgetune.report import environment


def test_the_exported_bundle_runs_in_llama_cpp_itself(project, first_run):
    from edgetune.core.files import sha256_file
    from edgetune.gguf import header, llamacpp

    deploy = project / "deploy"
    base, lora = deploy / "tiny-base-q4_k_m.gguf", deploy / "tiny-lora.gguf"  # export.variant: q4_k_m+lora
    assert base.read_bytes() == (project / "models" / "gguf" / base.name).read_bytes()
    sums = dict(reversed(line.split()) for line in (deploy / "SHA256SUMS").read_text().splitlines())
    assert sums == {base.name: sha256_file(base), lora.name: sha256_file(lora)}
    measured = read(project, "reports/metrics.json")["variants"]["q4_k_m+lora"]["files"]  # as evaluate recorded them
    assert [(Path(f["path"]).name, f["sha256"]) for f in measured] == [
        (base.name, sums[base.name]),
        (lora.name, sums[lora.name]),
    ]
    assert {p.name for p in deploy.iterdir()} == {
        base.name,
        lora.name,
        "SHA256SUMS",
        "chat_template.jinja",
        "generation.json",
        "Modelfile",
        "llama-server.sh",
        "README.md",
        ".edgetune",
    }
    # the phone file names the checkpoint as the user did, never a path of this machine
    adapter_config = read(project, "models/adapter/adapter_config.json")
    assert adapter_config["base_model_name_or_path"] == "models/base"
    assert adapter_config["target_modules"] == sorted(adapter_config["target_modules"])
    assert str(project.parent) not in repr(header.read(lora).fields)
    modelfile = (deploy / "Modelfile").read_text()
    assert f"FROM ./{base.name}\nADAPTER ./{lora.name}\n" in modelfile
    assert f'--lora "$here"/{lora.name}' in (deploy / "llama-server.sh").read_text()
    assert json.loads((deploy / "generation.json").read_text())["stop"] == ["<|im_end|>"]
    card = (deploy / "README.md").read_text()
    assert "# tiny (q4_k_m+lora)" in card and "| q4_k_m+lora |" in card and '"lora"' in card
    run_it = (
        f'llama-completion -m {base.name} --lora {lora.name} --chat-template-file chat_template.jinja -cnv -p "你好"'
    )
    assert run_it in card
    assert "## Pictures" not in card and ".png" not in card  # the bundle carries no pictures to link to
    android = card.split("## On an Android phone")[1]  # the recipe: NDK build of the pinned source, adb, llama-cli
    assert "-DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28" in android
    assert f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}" in android
    assert f"adb push path/to/build-android/bin/llama-cli {base.name} {lora.name} chat_template.jinja" in android
    assert f"./llama-cli -m {base.name} --lora {lora.name}" in android
    made = environment.one_line(json.loads((project / "reports" / "environment.json").read_text()))
    assert card.count(made) == 1 and card.rstrip().endswith(made)  # under "How it was made", once
    # the card's own line, in the bundle, for one turn: the bundled template wraps the prompt
    cmd = [
        str(llamacpp.tool("llama-completion")),
        *shlex.split(run_it)[1:],
        "-st",
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "2",
        "-c",
        "256",
    ]
    proc = subprocess.run(cmd, cwd=deploy, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "user\n你好\nassistant\n" in proc.stdout and "apply lora adapter" in proc.stderr


def arm_build() -> bool:
    from edgetune.gguf import llamacpp

    return bool(shutil.which("qemu-aarch64")) and all(
        (llamacpp.home() / "aarch64" / "cmake" / "bin" / tool).is_file()
        for tool in ("llama-perplexity", "llama-server")
    )


# The tiny model's next-token distributions are nearly flat (perplexity 153k of 152k tokens), so
# rounding moves them far less than the real model's (0.0011): aarch64 against x86 measured below
# llama-perplexity's last digit, 1e-6 (99th percentile 1e-6). The bound is set to catch a build
# that leaves out a part of the model: the bundle's base without its adapter is 4.7e-5 from it.
ARM_KLD_BOUND = 1e-5


@pytest.mark.skipif(not arm_build(), reason="no aarch64 build of llama.cpp or no qemu-aarch64: `make phone-setup`")
def test_the_bundle_answers_alike_on_an_arm64_build(changed):
    """make phone-check on the tiny bundle: the aarch64 build under qemu answers as x86 does."""
    import llama_cpp

    from edgetune.runtimes.llamacpp.scorer import Scorer

    set_params(changed, phone={"prompts": 6, "max_answer_tokens": 4, "ctx": 128, "chunks": 2})
    proc = subprocess.run(["edgetune", "phone-check"], cwd=changed, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    phone = read(changed, "reports/phone.json")
    deploy = changed / "deploy"
    sums = [line.split() for line in (deploy / "SHA256SUMS").read_text().splitlines()]
    assert [(f["name"], f["sha256"]) for f in phone["files"]] == [(name, digest) for digest, name in sums]
    kld, answers = phone["kld"], phone["answers"]
    assert kld["tokens_scored"] == 2 * (128 - 64 - 1) and kld["kld_mean"] < ARM_KLD_BOUND
    assert answers["prompts"] == 6 and answers["same_answer"] == 6  # the same greedy answers
    # the x86 margins again, by evaluate's own scorer on the prepared prompts
    rows = [json.loads(line) for line in (changed / "data/processed/test.jsonl").read_text().splitlines()][:6]
    base, lora = (deploy / name for _, name in sums)
    vocab = llama_cpp.Llama(model_path=str(base), vocab_only=True, verbose=False)
    prompts = [vocab.tokenize(r["prompt"].encode(), add_bos=False, special=True) for r in rows]
    words = yaml.safe_load((changed / "params.yaml").read_text())["data"]["labels"]
    first, second = words
    tokens = {k: vocab.tokenize(w.encode(), add_bos=False, special=False) for k, w in words.items()}
    scores, _ = Scorer(base, prompts, 1, 4, 2, 0, lora).run(prompts, tokens, False, words, 4)
    for row, s in zip(answers["rows"], scores, strict=True):  # decoded in other batches there: 0.001 apart
        assert row["margin_x86"] == pytest.approx(s[first] - s[second], abs=5e-3)
    # a label the builds disagree on sits closer to the boundary than the builds differ
    table = answers["rows"]
    flipped = [r for r in table if (r["margin_x86"] > 0) != (r["margin_aarch64"] > 0)]
    assert answers["same_label"] == 6 - len(flipped)
    widest = max(abs(r["margin_aarch64"] - r["margin_x86"]) for r in table)
    assert answers["max_margin_difference"] == widest
    assert all(abs(r["margin_x86"]) <= widest for r in flipped) and answers["disagreements_explained"]
    # the report shows it beside the variant it checked, and the card ships with it
    assert ran_stages(dvc(changed, "repro").stdout) == {"report", "export"}
    summary = (changed / "reports" / "summary.md").read_text()
    assert "**q4_k_m+lora on an arm64 CPU's arithmetic.**" in summary
    phone_section = summary.split("## On a phone")[1]
    row = next(line for line in phone_section.splitlines() if line.startswith("| q4_k_m+lora |"))
    assert row.endswith(f"| {kld['kld_mean']:.4f} |")


def test_the_bundle_can_ship_the_merged_file_for_runtimes_without_lora(changed):
    from edgetune.core.files import sha256_file

    set_params(changed, export={"merged": True})
    assert ran_stages(dvc(changed, "repro").stdout) == {"export"}
    deploy = changed / "deploy"
    merged = deploy / "tiny-q4_k_m.gguf"  # q4_k_m+lora, as the merged file of its type
    assert merged.read_bytes() == (changed / "models" / "gguf" / merged.name).read_bytes()
    assert (deploy / "SHA256SUMS").read_text() == f"{sha256_file(merged)}  {merged.name}\n"
    assert not list(deploy.glob("*lora*")) and "ADAPTER" not in (deploy / "Modelfile").read_text()
    assert "--lora" not in (deploy / "llama-server.sh").read_text()
    assert "# tiny (q4_k_m)" in (deploy / "README.md").read_text()
