"""fetch-model: Gemma's template is supplied, with its end of turn, where a model has none."""

import copy

import pytest
from conftest import committed

from edgetune.core.errors import EdgetuneError
from edgetune.data.fetch_model import supply_template


def test_gemma_template_is_supplied_with_its_end_of_turn(gemma_tokenizer, qwen_tokenizer):
    gemma_tokenizer, qwen_template = copy.deepcopy(gemma_tokenizer), qwen_tokenizer.chat_template
    assert not gemma_tokenizer.chat_template  # the registry's Gemma-3-270M carries none
    supply_template(gemma_tokenizer, committed("model", chat_template="gemma"))
    turns = [{"role": "system", "content": ""}, {"role": "user", "content": "你好"}]
    text = gemma_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n"
    assert gemma_tokenizer.eos_token == "<end_of_turn>"
    with pytest.raises(EdgetuneError, match="model.chat_template is gemma"):
        supply_template(qwen_tokenizer, committed("model", chat_template="gemma"))  # Qwen has no <end_of_turn>
    with pytest.raises(EdgetuneError, match="'vicuna'"):
        supply_template(qwen_tokenizer, committed("model", chat_template="vicuna"))
    assert qwen_tokenizer.chat_template == qwen_template  # refused before anything changed
