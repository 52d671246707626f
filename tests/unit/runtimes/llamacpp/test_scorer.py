"""The llama.cpp label scorer: shared-prefix, batched scoring against a plain one-at-a-time evaluation."""

import pytest
from conftest import LABELS, committed

from edgetune.core.labels import log_softmax
from edgetune.core.prompts import messages, render_prompt


@pytest.mark.parametrize(
    "answers", [LABELS, {"negative": "负面评价", "positive": "正面评价"}], ids=["one-token", "multi-token"]
)
def test_batched_scoring_matches_a_plain_full_evaluation(tiny_gguf, qwen_tokenizer, answers):
    """Shared-prefix, batched scoring gives the log-probabilities of a fresh one-at-a-time evaluation."""
    from llama_cpp import Llama

    from edgetune.runtimes.llamacpp.scorer import Scorer

    texts = ("质量很好，推荐", "太差了，退货", "一般般吧，还可以再便宜点", "物流快")
    prompts_text = [render_prompt(messages(t, None, committed("prompt")), qwen_tokenizer) for t in texts]
    full = Llama(model_path=str(tiny_gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    prompts = [full.tokenize(p.encode(), add_bos=False, special=True) for p in prompts_text]
    answer_tokens = {label: full.tokenize(w.encode(), add_bos=False, special=False) for label, w in answers.items()}

    scorer = Scorer(tiny_gguf, prompts, batch_size=3, max_new=4, threads=2, gpu_layers=-1)
    scores, texts_out = scorer.run(prompts, answer_tokens, True, answers, 4)
    assert 0 < scorer.prompt_evaluated < sum(map(len, prompts))  # the shared prefix was computed once
    scorer.close()

    for prompt, got, text in zip(prompts, scores, texts_out):
        for label, answer in answer_tokens.items():
            full.reset()
            full.eval(prompt + answer)
            expected = sum(log_softmax(full.scores[len(prompt) - 1 + i])[t] for i, t in enumerate(answer))
            assert got[label] == pytest.approx(expected, abs=2e-3)
        full.reset()  # greedy answer, one token at a time, no batching
        greedy = full.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
        assert greedy.startswith(text)
