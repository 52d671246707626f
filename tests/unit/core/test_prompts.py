"""Prompts: a long text cut to its head and tail on character boundaries, and rendered in the
model's own chat template, with the real Qwen tokenizer."""

from conftest import committed

from edgetune.core.prompts import ELLIPSIS, messages, render_prompt, truncate


def test_truncate_keeps_head_and_tail_on_character_boundaries(qwen_tokenizer):
    text = "开头很好。" * 30 + "但是最后非常失望"
    out, cut = truncate(text, qwen_tokenizer, max_tokens=20, head_tokens=6)
    assert cut and out.endswith("但是最后非常失望") and out.startswith("开头") and ELLIPSIS in out
    assert "\ufffd" not in out  # no character split in half
    n = len(qwen_tokenizer(out.replace(ELLIPSIS, ""), add_special_tokens=False)["input_ids"])
    assert n <= 21
    assert truncate("短评", qwen_tokenizer, 20, 6) == ("短评", False)


def test_render_uses_the_models_chat_template(qwen_tokenizer):
    turns = messages("房间很干净", "正面", committed("prompt", system="", instruction="情感："))
    assert turns[-1] == {"role": "assistant", "content": "正面"}
    prompt = render_prompt(turns[:-1], qwen_tokenizer)
    assert (
        prompt
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n情感：房间很干净<|im_end|>\n<|im_start|>assistant\n"
    )
    default = render_prompt(messages("x", None, committed("prompt", system=None)), qwen_tokenizer)
    assert default.startswith("<|im_start|>system\nYou are Qwen")  # the template's own default
