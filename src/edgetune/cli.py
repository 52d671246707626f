"""The edgetune command line: one sub-command per pipeline stage, plus tools around them."""

import errno

import click

from edgetune import __version__
from edgetune.core.errors import EdgetuneError
from edgetune.core.outputs import release_outputs
from edgetune.data.fetch_model import fetch_model
from edgetune.data.inputs import inputs
from edgetune.data.prepare import prepare
from edgetune.gguf.convert import convert
from edgetune.gguf.convert_lora import convert_lora
from edgetune.gguf.imatrix import imatrix
from edgetune.gguf.quantize import quantize
from edgetune.measure.baseline import baseline
from edgetune.measure.bench import bench
from edgetune.measure.evaluate import evaluate
from edgetune.measure.kld import quality
from edgetune.report.summary import report
from edgetune.runtimes.coreml.export import export_coreml
from edgetune.runtimes.coreml.verify import verify_coreml
from edgetune.runtimes.executorch.export import export_executorch
from edgetune.runtimes.litert.export import export_litert
from edgetune.runtimes.onnx.export import export_onnx
from edgetune.ship.chat import chat
from edgetune.ship.export import export
from edgetune.ship.phone import phone_check
from edgetune.ship.runtime_bundle import export_runtime_bundle
from edgetune.train.finetune import train
from edgetune.train.merge import merge


class PlainErrors(click.Group):
    """The commands, where a file the system will not let us write is a one-line error, and
    the outputs a command took are let go when it ends."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise
            raise EdgetuneError(
                f"{e.filename or 'an output'}: {e.strerror}. Make that folder writable (or free space "
                "there), or choose another output path."
            ) from None
        finally:
            release_outputs()  # a command run in-process (tests, notebooks) leaves no output held


@click.group(cls=PlainErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
def main():
    """Fine-tune a small LLM, convert it to GGUF, quantize it, and measure every step.

    Each stage reads its section of params.yaml; `dvc repro` runs them in order.
    """


for command in (
    inputs,
    fetch_model,
    prepare,
    train,
    merge,
    convert,
    convert_lora,
    imatrix,
    quantize,
    export_onnx,
    export_executorch,
    export_litert,
    export_coreml,
    verify_coreml,
    baseline,
    evaluate,
    quality,
    bench,
    report,
    export,
    export_runtime_bundle,
    chat,
    phone_check,
):
    main.add_command(command)


if __name__ == "__main__":  # `accelerate launch -m edgetune.cli` runs the CLI as a module
    main()
