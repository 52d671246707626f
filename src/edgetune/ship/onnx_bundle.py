"""Stage export-onnx-bundle: an ONNX Runtime GenAI variant as a folder an app loads.

    edgetune export-onnx-bundle --metrics reports/metrics.json --variant onnx-int4+lora --out deploy-onnx/int4

model.onnx, model.onnx.data   the base at its type (onnxruntime-genai's builder)
adapter.onnx_adapter          the trained adapter, applied at run time (Adapters)
genai_config.json             the runtime's settings: the model's inputs, the search defaults
tokenizer.json, tokenizer_config.json, chat_template.jinja
SHA256SUMS                    each file as the report measured it (evaluate recorded the hashes)
README.md                     what it scored against f16, and the Kotlin recipe for Android
"""

import json
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import copy_measured
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads

RUNTIME_PACKAGE = "com.microsoft.onnxruntime:onnxruntime-genai-android"


def prompt_around(folder: Path, p) -> tuple[str, str]:
    """What comes before and after a review in the prompt the model was trained on: the folder's own
    chat template with prompt.instruction (and prompt.system)."""
    from transformers import AutoTokenizer

    from edgetune.core.prompts import messages, render_prompt

    slot = "\x00REVIEW\x00"
    before, after = render_prompt(messages(slot, None, p), AutoTokenizer.from_pretrained(folder)).split(slot)
    return before, after


def kotlin(text: str) -> str:
    """A Kotlin string literal: JSON's escapes, and `$` escaped as Kotlin templates would read it."""
    return json.dumps(text, ensure_ascii=False).replace("$", "\\$")


def card(variant: str, v: dict, f16: dict, files: list[str], prompt: tuple[str, str]) -> str:
    low, high = v["accuracy_ci95"]
    vs = v.get("vs_f16") or {}
    paired = (
        f"; against f16, {vs['lost']} lost and {vs['gained']} gained (McNemar p = {vs['p_value']:.3f})" if vs else ""
    )
    kld = (
        f"KLD {v['kld_mean']:.4f} from f16, same top token {100 * v['same_top_token']:.1f}%. "
        if "kld_mean" in v
        else ""
    )
    before, after = (kotlin(part) for part in prompt)
    return f"""# {variant} for ONNX Runtime GenAI

The trained model as ONNX Runtime GenAI runs it: the base rounded by onnxruntime-genai's builder
(`model.onnx` with its data) and the adapter applied at run time (`adapter.onnx_adapter`).
**Not run on a phone here**: measured on the CPU of the machine that made it.

Accuracy {100 * v["accuracy"]:.1f}% (95% interval {100 * low:.1f}–{100 * high:.1f}) on
{v["n_samples"]} test examples, f16 {100 * f16["accuracy"]:.1f}%{paired}. {kld}
{v["model_bytes"] / 1e6:.0f} MB with the adapter ({v.get("adapter_bytes", 0) / 1e6:.1f} MB of it).

Files: {", ".join(f"`{f}`" for f in files)}; check them with `sha256sum -c SHA256SUMS`.

## Android (Kotlin)

Add `{RUNTIME_PACKAGE}` (the version the run used: the report's environment), push this folder
to the app's files directory, and:

```kotlin
import ai.onnxruntime.genai.*

val dir = "${{context.filesDir}}/{variant}"
Model(dir).use {{ model ->
    Tokenizer(model).use {{ tokenizer ->
        Adapters(model).use {{ adapters ->
            adapters.loadAdapter("$dir/adapter.onnx_adapter", "lora")   // the fine-tune
            // the prompt the model was trained on: chat_template.jinja with the run's instruction
            val prompt = {before} + review + {after}
            GeneratorParams(model).use {{ params ->
                params.setSearchOption("max_length", 512.0)
                Generator(model, params).use {{ generator ->
                    generator.setActiveAdapter(adapters, "lora")
                    generator.appendTokenSequences(tokenizer.encode(prompt))
                    val stream = tokenizer.createStream()
                    val answer = StringBuilder()
                    while (!generator.isDone()) {{
                        generator.generateNextToken()
                        answer.append(stream.decode(generator.getLastTokenInSequence(0)))
                    }}
                }}
            }}
        }}
    }}
}}
```

Without `setActiveAdapter` the same folder runs the untuned base: the adapter file is what makes
it the trained model. The answer holds the label word the model was trained to give.
"""


@click.command("export-onnx-bundle")
@click.option(
    "--metrics",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("reports/metrics.json"),
    show_default=True,
    help="The report's metrics: the variant's files and hashes, and its figures.",
)
@click.option("--variant", required=True, help="An ONNX variant of the report: onnx-int4+lora, ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
@reads("prompt")
def export_onnx_bundle(metrics: Path, variant: str, out: Path, params):
    """Bundle an ONNX Runtime GenAI VARIANT: its files as the report measured them, and its recipe."""
    report = json.loads(metrics.read_text())
    runtimes = report.get("runtimes", {})
    if variant not in runtimes:
        raise EdgetuneError(
            f"{metrics}: no ONNX variant {variant} (it has {', '.join(runtimes) or 'none'}). "
            "Add its type to runtimes.onnx and rerun the pipeline (`dvc repro`)."
        )
    v = runtimes[variant]
    record = v.get("files") or []
    check_outputs(inputs=[metrics, *(Path(f["path"]) for f in record)], folders=[out])
    with atomic_dir(out) as tmp:
        copy_measured(record, tmp, metrics)
        names = [Path(f["path"]).name for f in record]
        (tmp / "README.md").write_text(
            card(variant, v, report["variants"]["f16"], names, prompt_around(tmp, params.prompt))
        )
    click.echo(f"exported {variant} to {out}/ ({v['model_bytes'] / 1e6:.0f} MB)")
