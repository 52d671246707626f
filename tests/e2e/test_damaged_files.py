"""Damaged, foreign and non-finite inputs: every GGUF, adapter, checkpoint and bundle is read through
one checked reader, so each command refuses them in one line that names the file and the fix (exit
code 2, no traceback, no output), and chat neither crashes nor stops on what a user may type."""

import shutil
import struct
import subprocess
import sys

import pytest
from conftest import make_tiny_model, run, set_params

REFUSED = 2  # EdgetuneError's exit code: an error message, not a crash


def refused(result, *needles) -> bool:
    """A one-line error naming what is wrong, and no traceback."""
    assert result.exit_code == REFUSED and isinstance(result.exception, SystemExit), (result.exception, result.output)
    for needle in needles:
        assert needle in result.output, result.output
    return True


def chat(model, *options, stdin="你好\n/exit\n", closed=False):
    """`edgetune chat` in a process of its own: a crash in llama.cpp kills it, not the tests."""
    command = [sys.executable, "-m", "edgetune.cli", "chat", str(model), "--temperature", "0", "--threads", "2"]
    command += [str(o) for o in options]
    if closed:  # standard input closed, not merely empty
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    return subprocess.run(command, input=None if closed else stdin, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def adapters(tiny_model, qwen_tokenizer, tmp_path_factory):
    """PEFT adapters as training saves them, on the tiny model and on a narrower model of the same
    architecture (another base), each converted to a GGUF LoRA by convert-lora. Made once; read only."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapters")
    narrow = make_tiny_model(qwen_tokenizer, folder / "narrow", hidden=32)
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for name, base in (("tiny", tiny_model), ("narrow", narrow)):
            torch.manual_seed(0)
            config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
            model.save_pretrained(folder / f"{name}-adapter")
            gguf = folder / f"{name}-lora.gguf"
            result = run("convert-lora", "--adapter", folder / f"{name}-adapter", "--base", base, "--out", gguf)
            assert result.exit_code == 0, result.output
            made[name] = {"adapter": folder / f"{name}-adapter", "lora": gguf, "base": base}
    return made


# Damaged GGUF files: quantize and bench read the header themselves.


def damage_gguf(data: bytes, damage: str) -> bytes:
    if damage == "empty":
        return b""
    if damage.startswith("cut at "):
        return data[: int(damage.removeprefix("cut at "))]
    if damage == "bogus tensor count":  # the count right after the magic and the version
        return data[:8] + struct.pack("<Q", 2**40) + data[16:]
    if damage == "unknown version":
        return data[:4] + struct.pack("<I", 99) + data[8:]
    raise ValueError(damage)


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("empty", "not a GGUF file"),
        ("cut at 10", "truncated or damaged GGUF file"),  # inside the first counts
        ("cut at 2000", "truncated or damaged GGUF file"),  # inside the vocabulary
        ("cut at 6000000", "truncated GGUF file"),  # inside the tensors
        ("bogus tensor count", "truncated or damaged GGUF file"),
        ("unknown version", "GGUF version 99"),
    ],
)
@pytest.mark.parametrize("command", ["quantize", "bench", "bench --lora"])
def test_a_damaged_gguf_is_named_not_a_traceback(workdir, tiny_gguf, damage, needle, command):
    bad = workdir / "bad.gguf"
    bad.write_bytes(damage_gguf(tiny_gguf.read_bytes(), damage))
    args = {
        "quantize": ["quantize", "--model", bad, "--type", "q8_0", "--out", "q.gguf", "--stats", "q.json"],
        "bench": ["bench", "--model", bad, "--variant", "f16", "--out", "bench.json"],
        "bench --lora": ["bench", "--model", tiny_gguf, "--lora", bad, "--variant", "f16+lora", "--out", "bench.json"],
    }[command]
    assert refused(run(*args), f"{bad}: ", needle, "again")
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.gguf", "params.yaml"]


# Damaged adapters: convert-lora and merge read them through files.read_adapter.


@pytest.mark.parametrize(
    "file, content, needle",
    [
        ("adapter_config.json", "", "adapter_config.json: empty"),
        ("adapter_config.json", '{"r": 4,', "adapter_config.json: not valid JSON"),
        ("adapter_config.json", "[4, 8]", "adapter_config.json: holds a JSON list, not an object"),
        ("adapter_config.json", '{"r": 4}', "adapter_config.json: `peft_type` is missing"),
        ("adapter_config.json", '{"peft_type": "LORA", "r": "four", "lora_alpha": 8}', "`r` is 'four'"),
        ("adapter_model.safetensors", b"\x10\x00\x00\x00", "adapter_model.safetensors: damaged safetensors file"),
        ("adapter_model.safetensors", None, "adapter: no adapter_model.safetensors"),
    ],
)
@pytest.mark.parametrize("command", ["convert-lora", "merge"])
def test_a_damaged_adapter_is_named_not_a_traceback(workdir, adapters, tiny_model, file, content, needle, command):
    adapter = shutil.copytree(adapters["tiny"]["adapter"], workdir / "adapter")
    if content is None:
        (adapter / file).unlink()
    elif isinstance(content, bytes):
        (adapter / file).write_bytes(content)
    else:
        (adapter / file).write_text(content)
    out = workdir / ("lora.gguf" if command == "convert-lora" else "merged")
    assert refused(run(command, "--adapter", adapter, "--base", tiny_model, "--out", out), needle, "dvc repro train")
    assert not out.exists()


# A bundle's SHA256SUMS: phone-check reads only the files it lists, and only inside the bundle.


@pytest.mark.parametrize(
    "line, needle",
    [
        ("{digest}", "is not `<sha256>  <file name>`"),
        ("{digest}  ../outside.gguf", "`../outside.gguf` is not the name of a file beside it"),
        ("{digest}  {outside}", "is not the name of a file beside it"),  # an absolute path
        ("{digest}  *.gguf", "`*.gguf` is not the name of a file beside it"),
        ("nonsense  m-f16.gguf", "`nonsense` is not a sha256"),
    ],
)
def test_a_bundle_whose_checksums_point_anywhere_is_refused(workdir, tiny_gguf, line, needle):
    from edgetune.core.files import sha256_file

    bundle = workdir / "deploy"
    bundle.mkdir()
    shutil.copy(tiny_gguf, bundle / "m-f16.gguf")
    outside = shutil.copy(tiny_gguf, workdir / "outside.gguf")  # the same bytes: its checksum matches
    digest = sha256_file(tiny_gguf)
    (bundle / "Modelfile").write_text("FROM ./m-f16.gguf\n")
    (bundle / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    (bundle / "SHA256SUMS").write_text(
        f"{digest}  m-f16.gguf\n" + line.format(digest=digest, outside=outside) + "\n", encoding="utf-8"
    )
    (workdir / "test.jsonl").write_text('{"text": "no prompt: phone-check stops here, if it gets this far"}\n')
    result = run("phone-check", "--bundle", bundle, "--data", workdir / "test.jsonl", "--out", "phone.json")
    assert refused(result, f"{bundle / 'SHA256SUMS'}, line 2: ", needle, "Export the bundle again")
    assert not (workdir / "phone.json").exists()


# chat: a LoRA of another base, standard input closed, a line longer than the context.


@pytest.mark.parametrize("command", ["chat", "evaluate", "bench"])
def test_a_gguf_lora_made_for_another_base_is_refused(workdir, tiny_gguf, adapters, request, command):
    """The narrow model's LoRA on the tiny model: llama-cpp-python crashed on it (SIGSEGV) in chat."""
    foreign = adapters["narrow"]["lora"]
    if command == "chat":
        ran = chat(tiny_gguf, "--lora", foreign, "--max-tokens", 4)
        assert ran.returncode == REFUSED, (ran.returncode, ran.stderr[-2000:])
        output = ran.stderr
    else:
        if command == "evaluate":
            prepared = request.getfixturevalue("prepared")
            args = ["--data", prepared / "test.jsonl", "--val", prepared / "val.jsonl", "--out", "f16.json"]
        else:
            args = ["--out", "bench.json"]
        result = run(command, "--model", tiny_gguf, "--lora", foreign, "--variant", "f16+lora", *args)
        assert refused(result)
        output = result.output
    assert f"{foreign}: this LoRA does not fit the base {tiny_gguf}: " in output
    assert "blk.0.attn_k.weight is [64, 32]" in output and "it was made for another model" in output
    assert "Traceback" not in output and not (workdir / "f16.json").exists() and not (workdir / "bench.json").exists()


@pytest.mark.parametrize("command", ["convert-lora", "merge"])
def test_an_adapter_for_another_base_is_refused_before_any_output(workdir, adapters, tiny_model, command):
    """convert-lora wrote a 0.0 MB GGUF LoRA of the narrow model's adapter on the tiny base."""
    out = workdir / ("lora.gguf" if command == "convert-lora" else "merged")
    result = run(command, "--adapter", adapters["narrow"]["adapter"], "--base", tiny_model, "--out", out)
    assert refused(
        result,
        "this adapter does not fit the base model in",
        "model.layers.0.mlp.down_proj.weight is [64, 128] in the base, the adapter's update to it [32, 64]",
        "point --base at the model it was made for",
    )
    assert not out.exists()


@pytest.mark.parametrize("stdin", ["closed", "empty"])
def test_chat_without_input_ends_cleanly(tiny_gguf, stdin):
    ran = chat(tiny_gguf, stdin="", closed=stdin == "closed")
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    word = "(standard input is closed" if stdin == "closed" else "(end of input)"
    assert word in ran.stdout


def test_chat_refuses_a_line_longer_than_the_context_and_goes_on(tiny_gguf):
    """--n-ctx 96: a line of 300 characters is refused, the chat goes on, and as the conversation
    grows past the context its oldest turns give way."""
    script = "好" * 300 + "\n你好\n" + "".join(f"第{i}句\n" for i in range(6)) + "/exit\n"
    ran = chat(tiny_gguf, "--n-ctx", 96, "--max-tokens", 6, stdin=script)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    lines = ran.stdout.splitlines()
    refusal = "(not sent: this line alone fills the context of 96 tokens. Shorten it, or start the chat again "
    assert lines[1].startswith(refusal) and lines[2] == "you> 你好"
    assert sum(line.startswith("model> ") for line in lines) == 7  # every other line was answered
    assert any(line.startswith("(the oldest 2 turns no longer fit the context of 96 tokens") for line in lines)


# Non-finite numbers: a diverging run stops, and no later stage accepts NaN weights.


def test_training_that_diverges_stops_with_the_learning_rate_to_lower(workdir, tiny_model, prepared):
    set_params(
        workdir,
        lora={"top_layers": None},
        train={"lr": 1e30, "warmup_ratio": 0, "max_steps": 2, "logging_steps": 1, "batch_size": 4, "eval_steps": 2},
    )
    result = run(
        "train", "--model", tiny_model, "--data", prepared, "--out", workdir / "adapter", "--live", workdir / "live"
    )
    assert refused(result, "training diverged: ", "train.lr (1e+30) is too high", "lower it in params.yaml")
    assert not (workdir / "adapter" / "adapter_model.safetensors").exists()


def nan_into_safetensors(path, tensor_part: str) -> None:
    """One NaN in the first tensor whose name holds `tensor_part`, the file otherwise as it was."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = next(k for k in sorted(tensors) if tensor_part in k)
    tensors[name].view(-1)[0] = torch.nan
    save_file(tensors, path, metadata=metadata)


def nan_into_gguf_lora(path) -> None:
    """One f16 NaN at the start of the first LoRA tensor's data."""
    from edgetune.gguf import header as gguf_header

    tensor = gguf_header.read(path).tensors[0]
    assert tensor.type.name == "F16"
    with path.open("r+b") as f:
        f.seek(tensor.offset)
        f.write(struct.pack("<H", 0x7E00))


@pytest.mark.parametrize("command", ["convert-lora", "merge", "convert", "evaluate", "chat"])
def test_nan_weights_are_refused_by_every_stage_that_reads_them(
    workdir, tiny_model, tiny_gguf, adapters, request, command
):
    if command in ("convert-lora", "merge"):
        bad = shutil.copytree(adapters["tiny"]["adapter"], workdir / "adapter")
        nan_into_safetensors(bad / "adapter_model.safetensors", "lora_B")
        out = workdir / ("lora.gguf" if command == "convert-lora" else "merged")
        result = run(command, "--adapter", bad, "--base", tiny_model, "--out", out)
        needles = [f"{bad / 'adapter_model.safetensors'}: tensor base_model.model.", "retrain with a lower train.lr"]
    elif command == "convert":
        bad = shutil.copytree(tiny_model, workdir / "merged")
        nan_into_safetensors(bad / "model.safetensors", "layers.0.mlp.down_proj")
        out = workdir / "f16.gguf"
        result = run("convert", "--model", bad, "--out", out)
        needles = [f"{bad / 'model.safetensors'}: tensor model.layers.0.mlp.down_proj.weight", "lower train.lr"]
    else:
        bad = shutil.copy(adapters["tiny"]["lora"], workdir / "lora.gguf")
        nan_into_gguf_lora(bad)
        out = workdir / "f16.json"
        if command == "chat":
            ran = chat(tiny_gguf, "--lora", bad, "--max-tokens", 4)
            assert ran.returncode == REFUSED, (ran.returncode, ran.stdout[-2000:])
            result = ran.stderr
        else:
            prepared = request.getfixturevalue("prepared")
            data = ["--data", prepared / "test.jsonl", "--val", prepared / "val.jsonl", "--out", out]
            result = run("evaluate", "--model", tiny_gguf, "--lora", bad, "--variant", "f16+lora", *data)
        needles = [f"{bad}: tensor blk.", "holds 1 of", "values that are NaN or infinite", "lower train.lr"]
    if isinstance(result, str):
        assert all(n in result for n in needles) and "Traceback" not in result, result
    else:
        assert refused(result, *needles)
    assert not out.exists()


def test_the_checked_readers_accept_what_the_pipeline_writes(tmp_path, adapters, tiny_model, tiny_gguf):
    """The same readers pass the real files: an adapter on its base, its GGUF LoRA on the base GGUF,
    and SHA256SUMS as export writes it."""
    from edgetune.core.files import read_checksums, sha256_file, write_checksums
    from edgetune.core.weights import check_checkpoint, read_adapter
    from edgetune.gguf.files import check_lora

    config, shapes = read_adapter(adapters["tiny"]["adapter"], tiny_model)
    assert config["r"] == 4 and shapes["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"] == (4, 128)
    check_lora(tiny_gguf, adapters["tiny"]["lora"])
    check_checkpoint(tiny_model)
    shutil.copy(tiny_gguf, tmp_path / "m-f16.gguf")
    write_checksums(tmp_path / "SHA256SUMS", {"m-f16.gguf": sha256_file(tmp_path / "m-f16.gguf")})
    assert read_checksums(tmp_path / "SHA256SUMS") == {"m-f16.gguf": sha256_file(tiny_gguf)}
    assert subprocess.run(["sha256sum", "-c", "--status", "SHA256SUMS"], cwd=tmp_path).returncode == 0
