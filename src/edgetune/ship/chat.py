"""`edgetune chat MODEL`: talk to a merged HF checkpoint or a GGUF file in the model's own template.

Replies stream token by token. Each input line is a user turn; `/reset` starts a new
conversation, `/exit` (or end of input) leaves. Piped stdin works the same as a terminal.
A GGUF conversation lives in `--n-ctx` tokens: the oldest turns give way to new ones, and a line
too long for the context is refused rather than sent.
"""

import sys
import threading
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.remote_code import allowed
from edgetune.runtimes.base import Chat
from edgetune.runtimes.registry import RUNTIMES, open_variant


class HFChat:
    """transformers' generate in a thread, its tokens streamed as they come."""

    def __init__(self, path: Path, threads: int | None, trust: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        trust = allowed(path, trust, fix="pass --trust-remote-code")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=trust)
        if torch.cuda.is_available():
            self.model.to("cuda")

    def stream(self, turns: list[dict], s: dict):
        import torch
        from transformers import TextIteratorStreamer

        inputs = self.tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(s["seed"])
        sample = s["temperature"] > 0
        options = dict(
            max_new_tokens=s["max_tokens"],
            repetition_penalty=s["repetition_penalty"],
            do_sample=sample,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if sample:
            options.update(temperature=s["temperature"], top_p=s["top_p"])
        worker = threading.Thread(target=self.model.generate, kwargs={**inputs, **options})
        worker.start()
        yield from streamer
        worker.join()


def make_room(bot: Chat, turns: list[dict], turn: dict, keep: int, max_tokens: int) -> int:
    """Fit the user's `turn` after `turns` in the context: the oldest exchanges (after the first
    `keep` turns, the system prompt) are forgotten until a whole reply fits, else the reply is
    shortened. The reply's length; 0 where the line alone does not fit."""
    if bot.room([*turns[:keep], turn]) < 1:
        click.echo(
            f"(not sent: this line alone fills the context of {bot.n_ctx} tokens. Shorten it, or start the chat "
            "again with a larger --n-ctx.)"
        )
        return 0
    forgotten = 0
    while bot.room([*turns, turn]) < max_tokens and len(turns) > keep:
        del turns[keep : keep + 2]  # the oldest exchange: a question and its answer
        forgotten += 2
    if forgotten:
        click.echo(f"(the oldest {forgotten} turns no longer fit the context of {bot.n_ctx} tokens: forgotten)")
    room = bot.room([*turns, turn])
    if room < max_tokens:
        click.echo(f"(the context of {bot.n_ctx} tokens leaves this reply {room} of them)")
    return min(room, max_tokens)


def open_model(model: Path, n_ctx: int, threads: int | None, gpu_layers: int, trust: bool, lora: Path | None = None):
    if model.is_file() and model.suffix in RUNTIMES:
        variant = open_variant(model, lora)
        variant.check()  # llama-cpp-python crashes on a LoRA made for another model
        return variant.chat(n_ctx, threads, gpu_layers)
    if lora:
        raise EdgetuneError(
            f"--lora {lora}: a GGUF LoRA runs on a GGUF model; {model} is not one. Point MODEL at the "
            "quantized base it was trained on (models/gguf/<name>-base-<type>.gguf)."
        )
    if model.is_dir() and (model / "config.json").is_file():
        return HFChat(model, threads, trust)
    raise EdgetuneError(
        f"{model}: neither a .gguf file nor an HF checkpoint folder (with config.json). "
        "Point it at models/merged or a file in models/gguf/."
    )


@click.command("chat")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--system", default=None, help="A system prompt for every conversation.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--repetition-penalty", type=click.FloatRange(min=0), default=1.1, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Per reply.")
@click.option("--n-ctx", type=click.IntRange(min=64), default=4096, show_default=True, help="Context length (GGUF).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Default: all cores.")
@click.option(
    "--gpu-layers",
    type=click.IntRange(min=-1),
    default=-1,
    show_default=True,
    help="GGUF layers offloaded to the GPU, where llama.cpp has one: -1 all, 0 none.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Let an HF checkpoint's own Python code (auto_map) run.")
@click.option(
    "--lora",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A GGUF LoRA applied at run time on the GGUF MODEL (a +lora variant: its base and models/gguf/<name>-lora.gguf).",
)
def chat(
    model: Path,
    system: str | None,
    n_ctx: int,
    threads: int | None,
    gpu_layers: int,
    trust_remote_code: bool,
    lora: Path | None,
    **sampling,
):
    """Chat with MODEL (models/merged, or a GGUF file, with --lora for an adapter). /reset starts over, /exit leaves."""
    if sys.stdin is None:  # started with standard input closed
        click.echo("(standard input is closed: nothing to read, so nothing to answer)")
        return
    sys.stdin.reconfigure(errors="replace")  # a stray non-UTF-8 byte becomes U+FFFD, not a traceback
    bot = open_model(model, n_ctx, threads, gpu_layers, trust_remote_code, lora)
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": system}] if system else []
    turns = list(start)
    if interactive:
        click.echo(f"chatting with {model} (/reset to start over, /exit to leave)")
    while True:
        if interactive:
            click.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            click.echo(("\n" if interactive else "") + "(end of input)")
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            turns = list(start)
            click.echo("(new conversation)")
            continue
        if not interactive:
            click.echo(f"you> {text}")
        turn = {"role": "user", "content": text}
        max_tokens = sampling["max_tokens"]
        if not isinstance(bot, HFChat):  # a runtime's context holds --n-ctx tokens; an HF model's, its own
            max_tokens = make_room(bot, turns, turn, len(start), max_tokens)
            if not max_tokens:
                continue
        turns.append(turn)
        click.echo("model> ", nl=False)
        reply = []
        for piece in bot.stream(turns, {**sampling, "max_tokens": max_tokens}):
            reply.append(piece)
            click.echo(piece, nl=False)
        click.echo()
        turns.append({"role": "assistant", "content": "".join(reply)})
