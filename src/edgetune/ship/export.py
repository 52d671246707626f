"""Stage export: the recommended variant as a folder ready for a phone or a server.

<model>-<variant>.gguf   the file the report recommends (recommend.py), and SHA256SUMS; for a
                         +lora variant the quantized base <model>-base-<type>.gguf and the
                         adapter <model>-lora.gguf, applied at run time (`export.merged: true`
                         ships the merged file of that type instead, for runtimes without LoRA)
chat_template.jinja      the template it was trained with (also inside the GGUF)
generation.json          sampling settings and the token a turn ends with
Modelfile                for `ollama create` (Ollama reads the template from the GGUF; ADAPTER)
llama-server.sh          llama.cpp's server with the same settings (and --lora), OpenAI-compatible API
README.md                the model card: metrics of every variant, how the model was made, and how to
                         build the pinned llama.cpp for an Android phone and run it there
"""

import json
import shlex
import unicodedata
from pathlib import Path

import click

from edgetune.core.config import ExportParams
from edgetune.core.errors import EdgetuneError, shown
from edgetune.core.files import copy_measured
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads
from edgetune.core.remote_code import allowed as trust_remote_code
from edgetune.core.variants import LORA, NOT_SHIPPED
from edgetune.report import environment
from edgetune.runtimes.base import Variant
from edgetune.runtimes.registry import open_variant

CARD_SECTIONS = ("model", "data", "lora", "train", "quantize")  # declared as its params in dvc.yaml


def portable(settings: dict) -> dict:
    """The settings with every absolute path cut to its last part: a model card names no folder of
    the machine that made it."""
    if isinstance(settings, dict):
        return {k: portable(v) for k, v in settings.items()}
    if isinstance(settings, list):
        return [portable(v) for v in settings]
    if isinstance(settings, str) and (settings.startswith(("/", "~")) or settings[1:3] == ":\\"):
        return Path(settings).name
    return settings


def summary_tables(summary: str) -> str:
    """summary.md without its title, footer and pictures (the bundle does not carry the PNGs)."""
    body = summary.split("\n", 1)[1].split(environment.FOOTER)[0]
    return body.split("\n## Pictures\n")[0].strip()


def model_card(
    name: str, variant: str, metrics: dict, summary: str, settings: dict, env: dict, files: Variant, p: ExportParams
) -> str:
    made = portable({section: settings.get(section, {}) for section in CARD_SECTIONS})
    recommended = metrics.get("recommended") or {}
    how = (
        "trained on the dequantized weights of the quantized base that ships here, converted to a GGUF LoRA and "
        "applied at run time (`--lora`): the base is rounded once, the adapter not at all."
        if files.lora
        else "merged into the 16-bit base, converted to GGUF and quantized with llama.cpp."
    )
    return f"""# {name} ({variant})

Fine-tuned with LoRA from `{made["model"].get("source")}` on `{made["data"].get("source")}` by edgetune,
{how}

**{variant}**: {recommended["reason"] if recommended.get("variant") == variant else "chosen by export.variant or export.merged."}

## Run it

```bash
sha256sum -c SHA256SUMS
ollama create {shlex.quote(name)} -f Modelfile && ollama run {shlex.quote(name)}
sh llama-server.sh            # http://localhost:8080, OpenAI-compatible
llama-completion -m {shlex.quote(files.gguf.name)}{lora_args(files)} --chat-template-file chat_template.jinja -cnv -p "你好"
```
{android_recipe(files, env, p)}
## Every variant, measured in the same run

{summary_tables(summary)}

## How it was made

```json
{json.dumps(made, ensure_ascii=False, indent=2)}
```

{environment.one_line(env)}
"""


def chosen(report: dict, p: ExportParams, metrics: Path) -> tuple[str, list[dict]]:
    """The variant to ship (export.variant, else the recommended one; its merged twin with
    export.merged) and its files as evaluate recorded them."""
    variant = p.variant or (report.get("recommended") or {}).get("variant")
    if not variant or variant not in report["variants"]:
        raise EdgetuneError(
            f"params.yaml: export.variant is {variant!r}; use one of "
            f"{', '.join(v for v in report['variants'] if v not in NOT_SHIPPED)}, or null for the recommended one."
        )
    shipped = variant.removesuffix(LORA) if p.merged else variant  # the merged file for runtimes without LoRA
    record = report["variants"][shipped].get("files")
    if not record:
        raise EdgetuneError(f"{metrics}: no files recorded for {shipped}; rerun the pipeline (`dvc repro`).")
    return shipped, record


def write_run_files(folder: Path, files: Variant, p: ExportParams, end_of_turn: str) -> None:
    """The sampling settings, and how Ollama and llama-server run the files with them."""
    settings = {
        "temperature": p.temperature,
        "top_p": p.top_p,
        "repetition_penalty": p.repetition_penalty,
        "context": p.context,
        "stop": [end_of_turn],
    }
    (folder / "generation.json").write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n")
    (folder / "Modelfile").write_text(
        f"FROM ./{files.gguf.name}\n"
        + (f"ADAPTER ./{files.lora.name}\n" if files.lora else "")
        + f"PARAMETER temperature {p.temperature}\nPARAMETER top_p {p.top_p}\n"
        f"PARAMETER repeat_penalty {p.repetition_penalty}\nPARAMETER num_ctx {p.context}\n"
        f'PARAMETER stop "{end_of_turn}"\n'
    )
    adapter = f' --lora "$here"/{shlex.quote(files.lora.name)}' if files.lora else ""
    (folder / "llama-server.sh").write_text(
        "#!/bin/sh\n# llama.cpp's server with the template the model was trained with\n"
        'here=$(dirname "$0")\n'
        f'exec llama-server -m "$here"/{shlex.quote(files.gguf.name)}{adapter} --jinja --chat-template-file "$here"/chat_template.jinja '
        f"-c {p.context} --temp {p.temperature} --top-p {p.top_p} --repeat-penalty {p.repetition_penalty} "
        '--host 127.0.0.1 --port 8080 "$@"\n'
    )
    (folder / "llama-server.sh").chmod(0o755)


@click.command("export")
@click.option(
    "--metrics",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("reports/metrics.json"),
    show_default=True,
)
@click.option(
    "--summary",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("reports/summary.md"),
    show_default=True,
)
@click.option(
    "--environment",
    "environment_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("reports/environment.json"),
    show_default=True,
    help="What the report was made with (report stage).",
)
@click.option(
    "--merged",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/merged"),
    show_default=True,
    help="Tokenizer, chat template and generation config.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("deploy"), show_default=True)
@reads("export", *CARD_SECTIONS)
def export(metrics: Path, summary: Path, environment_file: Path, merged: Path, out: Path, params):
    """Bundle the recommended GGUF with its template, settings, Modelfile, server command and model card.

    The GGUF files are the ones the report measured: evaluate recorded their paths and hashes in
    METRICS, and a file that changed since is refused."""
    from transformers import AutoTokenizer

    p = params.export
    report = json.loads(metrics.read_text())
    shipped, record = chosen(report, p, metrics)
    files = open_variant(*(Path(f["path"]) for f in record))
    check_names(files)
    check_outputs(inputs=[metrics, summary, environment_file, merged, *files.paths], folders=[out])
    files.check(whole=False)  # the copies are checked against the sha256 evaluate recorded
    tokenizer = AutoTokenizer.from_pretrained(
        merged, trust_remote_code=trust_remote_code(merged, params.model.trust_remote_code)
    )
    with atomic_dir(out) as tmp:
        copy_measured(record, tmp, metrics)
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template)
        write_run_files(tmp, files, p, tokenizer.eos_token)
        (tmp / "README.md").write_text(
            model_card(
                params.model.name,
                shipped,
                report,
                summary.read_text(),
                {section: params.raw(section) for section in CARD_SECTIONS},
                json.loads(environment_file.read_text()),
                files,
                p,
            )
        )
    click.echo(f"exported {shipped} to {out}/ ({files.bytes / 1e6:.0f} MB)")


def android_recipe(files: Variant, env: dict, p: ExportParams) -> str:
    """The pinned llama.cpp built with the Android NDK (llama.cpp's docs/android.md), the files pushed
    with adb, and llama-cli run on the phone: the arm kernels `make phone-check` ran under emulation."""
    version = env["packages"].get("llama-cpp-python") or "<version>"
    names = " ".join(shlex.quote(f.name) for f in files.paths)
    on_phone = (  # run by the phone's shell: quoted once for it, and once more for adb's
        f"cd /data/local/tmp/edgetune && ./llama-cli -m {shlex.quote(files.gguf.name)}{lora_args(files)} \\\n"
        f"  --jinja --chat-template-file chat_template.jinja -c {p.context} --temp {p.temperature} "
        f"--top-p {p.top_p} \\\n  --repeat-penalty {p.repetition_penalty} -t 4"
    )
    return f"""
## On an Android phone

Not run by edgetune, which has no phone; `make phone-check` runs the same source, built for the same
arm64 CPU (armv8.2-a with dot products), under emulation, and the report's *On a phone* section has
what it found. Build the llama.cpp these files were made and measured with, with the Android NDK
(`ANDROID_NDK` set to its root):

```bash
pip download --no-deps --no-binary :all: llama-cpp-python=={version}
tar xzf llama_cpp_python-{version}.tar.gz && cd llama_cpp_python-{version}/vendor/llama.cpp
cmake -B build-android -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake \\
  -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28 -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \\
  -DGGML_LLAMAFILE=OFF -DLLAMA_OPENSSL=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod -DBUILD_SHARED_LIBS=OFF
cmake --build build-android --config Release -j --target llama-cli
```

Then, from this folder, with the phone connected (`adb devices`):

```bash
adb shell mkdir -p /data/local/tmp/edgetune
adb push path/to/build-android/bin/llama-cli {names} chat_template.jinja /data/local/tmp/edgetune/
adb shell {shlex.quote(on_phone)}
```

`-t 4`: a phone's big cores; `-c`: keep the context small, a phone has little RAM to spare.
"""


def check_names(files: Variant) -> None:
    """File names the Modelfile can hold: a control character (a newline) would start a line of its own there."""
    for path in files.paths:
        if any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in path.name):
            raise EdgetuneError(
                f"{shown(str(path))}: the file name holds a control character, which would break a line of the "
                "Modelfile in two. Rename the file (model.name names the pipeline's files), and run the pipeline again."
            )


def lora_args(files: Variant) -> str:
    return f" --lora {shlex.quote(files.lora.name)}" if files.lora else ""
