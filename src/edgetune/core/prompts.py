"""How a labelled text becomes a chat: truncation to a token budget and the model's own template;
and how chats become the plain text llama.cpp's tools read."""

from edgetune.core.config import PromptParams

ELLIPSIS = "…"


def truncate(text: str, tokenizer, max_tokens: int, head_tokens: int) -> tuple[str, bool]:
    """Keep the first `head_tokens` and the last `max_tokens - head_tokens` tokens of `text`.

    Reviews often give their verdict at the end, so a long one keeps its head and its tail.
    Cuts fall on character boundaries (token offsets), never inside a multi-byte character.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text, False
    tail_tokens = max_tokens - head_tokens
    head_end = offsets[head_tokens - 1][1] if head_tokens > 0 else 0
    tail_start = offsets[len(offsets) - tail_tokens][0] if tail_tokens > 0 else len(text)
    return text[:head_end] + ELLIPSIS + text[tail_start:], True


def messages(text: str, answer: str | None, p: PromptParams) -> list[dict]:
    """The conversation for one example; without `answer` it ends at the user turn."""
    turns = [] if p.system is None else [{"role": "system", "content": p.system}]
    turns.append({"role": "user", "content": p.instruction + text})
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


def render_prompt(turns: list[dict], tokenizer) -> str:
    """The exact prompt string the model sees before it answers (template + generation prompt)."""
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with (the template and instruction), at least one token
    short of the shortest prompt: scorers compute it once and each prompt's own tokens after it."""
    prefix = prompts[0][: min(map(len, prompts)) - 1]
    for tokens in prompts:
        while tokens[: len(prefix)] != prefix:
            prefix = prefix[:-1]
    return prefix


def plain_text(rows: list[dict]) -> str:
    """The words of each conversation, one turn per line. Template markers such as <|im_start|>
    are left out: llama.cpp's perplexity tool would read them as plain text, not special tokens."""
    return "".join(m["content"] + "\n" for r in rows for m in r["messages"] if m["content"])
