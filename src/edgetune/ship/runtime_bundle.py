"""Stages export-<runtime>-bundle: another runtime's variant as a folder an app loads, with the
recipe for that runtime.

    edgetune export-runtime-bundle --metrics reports/metrics.json --variant onnx-int4+lora --out deploy-onnx/int4
    edgetune export-runtime-bundle --metrics reports/metrics.json --variant executorch-8da4w+lora --out deploy-executorch/8da4w
    edgetune export-runtime-bundle --metrics reports/metrics.json --variant litert-int8 --out deploy-litert/int8

ONNX Runtime GenAI: model.onnx and its data (the base at its type), adapter.onnx_adapter (the
trained adapter, applied at run time with Adapters), genai_config.json; ExecuTorch: model.pte (the
program with the adapter in fp32), foundation.ptd (the base at its type), export.json; LiteRT:
model.litertlm (LiteRT-LM's bundle) and the model.tflite it wraps (the merged model at its type).
Each: the tokenizer files and chat_template.jinja, SHA256SUMS (each file as the report measured
it: evaluate recorded the hashes), and a README with what it scored against f16 and the app-side
recipe. Core ML: the package's tree as verify-coreml checked it, and a Swift recipe.
"""

import json
import os
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import copy_measured
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads
from edgetune.core.variants import EXECUTORCH, LITERT, ONNX, runtime_of
from edgetune.runtimes.coreml import PACKAGE


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


def card(variant: str, v: dict, f16: dict, files: list[str], prompt: tuple[str, str], p) -> str:
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
    runtime, _ = runtime_of(variant)
    what, recipe = RECIPES[runtime]
    before, after = (kotlin(part) for part in prompt)
    size = f"{v['model_bytes'] / 1e6:.0f} MB"
    size += (
        f" with the adapter ({v['adapter_bytes'] / 1e6:.1f} MB of it)"
        if "adapter_bytes" in v
        else ", the adapter merged"
    )
    return f"""# {variant} for {v.get("runtime", runtime)}

The trained model as {v.get("runtime", runtime)} runs it: {what}
**Not run on a phone here**: measured on the CPU of the machine that made it.

Accuracy {100 * v["accuracy"]:.1f}% (95% interval {100 * low:.1f}–{100 * high:.1f}) on
{v["n_samples"]} test examples, f16 {100 * f16["accuracy"]:.1f}%{paired}. {kld}
{size}.

Files: {", ".join(f"`{f}`" for f in files)}; check them with `sha256sum -c SHA256SUMS`.

{recipe.format(variant=variant, before=before, after=after, system=kotlin(p.system or ""), instruction=kotlin(p.instruction))}"""


ONNX_RECIPE = """## Android (Kotlin)

Add `com.microsoft.onnxruntime:onnxruntime-genai-android` (the version the run used: the report's
environment), push this folder to the app's files directory, and:

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

EXECUTORCH_RECIPE = """## Android (Kotlin), with ExecuTorch's LLM runner

Add `org.pytorch:executorch-android` (the version of executorch the run used: the report's
environment), push this folder to the app's files directory, and:

```kotlin
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

val dir = "${{context.filesDir}}/{variant}"
// the program (with the fine-tune in it), the tokenizer, greedy decoding, the base's weights
val module = LlmModule("$dir/model.pte", "$dir/tokenizer.json", 0.0f, "$dir/foundation.ptd")
// the prompt the model was trained on: chat_template.jinja with the run's instruction
val prompt = {before} + review + {after}
val answer = StringBuilder()
module.generate(prompt, 512, object : LlmCallback {{
    override fun onResult(result: String) {{ answer.append(result) }}
    override fun onStats(stats: String) {{}}
}}, false)
```

The same with the C++ runner built from ExecuTorch's `examples/models/llama` (on a phone over adb,
or on a desktop), `$PROMPT` holding the prompt above:

```sh
llama_main --model_path model.pte --data_path foundation.ptd --tokenizer_path tokenizer.json \\
  --temperature 0 --seq_len 512 --prompt "$PROMPT"
```

`model.pte` and `foundation.ptd` were exported together and only work as a pair (XNNPACK keys its
weights by hash): ship both, or export both again. The answer holds the label word the model was
trained to give.
"""

LITERT_RECIPE = """## Android (Kotlin), with LiteRT-LM

Add `com.google.ai.edge.litertlm:litertlm-android`, push `model.litertlm` to the app's files
directory, and:

```kotlin
import com.google.ai.edge.litertlm.*

val config = EngineConfig(modelPath = "${{context.filesDir}}/{variant}/model.litertlm", backend = Backend.CPU)
Engine(config).use {{ engine ->
    engine.initialize()
    // the chat template and stop tokens are inside model.litertlm; the run's system prompt and
    // instruction are the ones the model was trained on
    val conversation = engine.createConversation(ConversationConfig(
        systemInstruction = Contents.of({system}),
        samplerConfig = SamplerConfig(topK = 1, topP = 1.0, temperature = 0.0)))  // greedy, as measured
    conversation.use {{
        val answer = it.sendMessage({instruction} + review).toString()
    }}
}}
```

`model.litertlm` wraps `model.tflite` (the file measured here) with the tokenizer, the chat
template and the stop tokens. The `.tflite` alone runs in the LiteRT interpreter
(`com.google.ai.edge.litert:litert`) through its `prefill_<n>` and `decode` signatures, the KV cache
passed in and out of each call, as the report's evaluation ran it, on the tokens of

```kotlin
val prompt = {before} + review + {after}
```

The answer holds the label word the model was trained to give.
"""

RECIPES = {
    ONNX: (
        "the base rounded by onnxruntime-genai's builder (`model.onnx` with its data) and the adapter "
        "applied at run time (`adapter.onnx_adapter`).",
        ONNX_RECIPE,
    ),
    EXECUTORCH: (
        "the base rounded by ExecuTorch's exporter for XNNPACK (`foundation.ptd`) and the program "
        "with the adapter in fp32 beside it (`model.pte`).",
        EXECUTORCH_RECIPE,
    ),
    LITERT: (
        "the adapter merged into the base (LiteRT's LoRA covers attention alone, the adapter the MLP "
        "too) and the merged model rounded by litert-torch (`model.tflite`, wrapped as `model.litertlm`).",
        LITERT_RECIPE,
    ),
}


@click.command("export-runtime-bundle")
@click.option(
    "--metrics",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("reports/metrics.json"),
    show_default=True,
    help="The report's metrics: the variant's files and hashes, and its figures.",
)
@click.option(
    "--variant", required=True, help="Another runtime's variant of the report: onnx-int4+lora, litert-int8, ..."
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
@reads("prompt")
def export_runtime_bundle(metrics: Path, variant: str, out: Path, params):
    """Bundle another runtime's VARIANT: its files as the report measured them, and its recipe."""
    report = json.loads(metrics.read_text())
    runtimes = {**report.get("runtimes", {}), **report.get("coreml", {})}
    if variant not in runtimes:
        raise EdgetuneError(
            f"{metrics}: no runtime variant {variant} (it has {', '.join(runtimes) or 'none'}). "
            f"Add its type to runtimes.{runtime_of(variant)[0]} and rerun the pipeline (`dvc repro`)."
        )
    v = runtimes[variant]
    record = v.get("files") or []
    check_outputs(inputs=[metrics, *(Path(f["path"]) for f in record)], folders=[out])
    with atomic_dir(out) as tmp:
        if variant in report.get("coreml", {}):  # a package is a tree: each file at its place in it
            names = copy_measured(record, tmp, metrics, Path(os.path.commonpath([f["path"] for f in record])))
            text = coreml_card(variant, v, names, prompt_around(tmp, params.prompt))
        else:
            names = copy_measured(record, tmp, metrics)
            text = card(variant, v, report["variants"]["f16"], names, prompt_around(tmp, params.prompt), params.prompt)
        (tmp / "README.md").write_text(text)
    click.echo(f"exported {variant} to {out}/ ({v['model_bytes'] / 1e6:.0f} MB)")


def coreml_card(variant: str, v: dict, names: list[str], prompt: tuple[str, str]) -> str:
    e, w = v["weight_error"], v.get("weights_in_pytorch") or {}
    kld = (
        f"Run in PyTorch with these weights, the model is KLD {w['kld_mean']:.4f} from f16 (same top token "
        f"{100 * w['same_top_token']:.1f}%); Core ML's own fp16 arithmetic is not in that figure. "
        if w
        else ""
    )
    before, after = (json.dumps(part, ensure_ascii=False) for part in prompt)
    package = sorted({n.split("/")[0] for n in names if n.startswith(PACKAGE)})
    return f"""# {variant} for Core ML (iOS 18)

The trained model with its adapter merged, as an ML Program (`{", ".join(package)}`), its weights
compressed by coremltools ({v["compressed_tensors"]} of {v["matrices"]} matrices; relative error
{100 * e["mean"]:.1f}% on average, {100 * e["max"]:.1f}% at most). {kld}
**Not run, here or on a device**: Core ML runs only on Apple's systems. What was checked is in
the report's *Core ML* section.

{v["model_bytes"] / 1e6:.0f} MB. Files: check them with `sha256sum -c SHA256SUMS`.

## iOS (Swift)

Add `model.mlpackage` to the Xcode target (Xcode compiles it to `model.mlmodelc`), the tokenizer
files to the bundle, and swift-transformers (`Tokenizers`) to the package dependencies. The model
takes `input_ids` and `attention_mask` (Int32, 1 x n, n up to {v["inputs"]["input_ids"]["ranges"][-1][1]})
and returns `logits` for every position; it keeps no cache, so each step runs the whole sequence.

```swift
import CoreML
import Tokenizers

let model = try MLModel(contentsOf: Bundle.main.url(forResource: "model", withExtension: "mlmodelc")!)
let tokenizer = try await AutoTokenizer.from(modelFolder: Bundle.main.resourceURL!)
// the prompt the model was trained on: chat_template.jinja with the run's instruction
var ids = tokenizer.encode(text: {before} + review + {after})
let end = tokenizer.convertTokenToId("<|im_end|>")
var answer: [Int] = []
for _ in 0..<8 {{
    let n = NSNumber(value: ids.count)
    let input = try MLMultiArray(shape: [1, n], dataType: .int32)
    let mask = try MLMultiArray(shape: [1, n], dataType: .int32)
    for (i, t) in ids.enumerated() {{ input[i] = NSNumber(value: t); mask[i] = 1 }}
    let out = try model.prediction(from: MLDictionaryFeatureProvider(
        dictionary: ["input_ids": input, "attention_mask": mask]))
    let logits = out.featureValue(for: "logits")!.multiArrayValue!   // 1 x n x vocabulary
    let vocabulary = logits.shape[2].intValue, last = (ids.count - 1) * vocabulary
    var best = 0
    for v in 1..<vocabulary where logits[last + v].floatValue > logits[last + best].floatValue {{ best = v }}
    if best == end {{ break }}
    answer.append(best); ids.append(best)
}}
let text = tokenizer.decode(tokens: answer)   // holds the label word the model was trained to give
```
"""
