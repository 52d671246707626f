"""A conversation with a GGUF variant through llama-cpp-python, in the chat template and with the
end-of-turn token stored in the GGUF, its reply streamed as it comes."""

from pathlib import Path


class GGUFChat:
    """llama-cpp-python, with the chat template and end-of-turn token stored in the GGUF."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None, gpu_layers: int, lora: Path | None = None):
        from llama_cpp import Llama

        self.n_ctx = n_ctx
        self.llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_gpu_layers=gpu_layers,
            lora_path=str(lora) if lora else None,
            verbose=False,
        )

    def room(self, turns: list[dict]) -> int:
        """Tokens left in the context for the reply once `turns` are in it, rendered as
        llama-cpp-python renders them: in the GGUF's own chat template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:  # a model without a BOS token says -1
            return self.llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

        template = self.llm.metadata.get("tokenizer.chat_template")
        if template:
            prompt = Jinja2ChatFormatter(
                template, eos_token=text(self.llm.token_eos()), bos_token=text(self.llm.token_bos())
            )
            used = len(self.llm.tokenize(prompt(messages=turns).prompt.encode("utf-8"), special=True))
        else:  # llama-cpp-python's generic format: the words, and a margin for its role markers
            used = sum(len(self.llm.tokenize(t["content"].encode("utf-8"))) + 8 for t in turns)
        return self.n_ctx - used

    def stream(self, turns: list[dict], s: dict):
        chunks = self.llm.create_chat_completion(
            turns,
            stream=True,
            temperature=s["temperature"],
            top_p=s["top_p"],
            repeat_penalty=s["repetition_penalty"],
            max_tokens=s["max_tokens"],
            seed=s["seed"],
        )
        for chunk in chunks:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                yield text
