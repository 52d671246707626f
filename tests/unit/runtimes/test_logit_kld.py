"""The KLD computed in Python from any runtime's logits agrees with llama-perplexity's own figure
on the same GGUFs: the one scale every runtime's variants are put on is llama.cpp's."""

import shutil

import pytest
from conftest import REPO, run

from edgetune.core.errors import EdgetuneError
from edgetune.runtimes import logit_kld


def test_python_kld_agrees_with_llama_perplexity(tiny_gguf, reviews, tmp_path, monkeypatch):
    from edgetune.runtimes.llamacpp.variant import GGUFVariant

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    quant = tmp_path / "q4_0.gguf"
    result = run("quantize", "--model", tiny_gguf, "--type", "q4_0", "--out", quant, "--stats", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    text = tmp_path / "text.txt"
    text.write_text("".join(r["text"] + "\n" for r in reviews), encoding="utf-8")
    reference, variant = GGUFVariant(tiny_gguf), GGUFVariant(quant)
    tool = variant.kl_divergence(reference, text, 64, 4, 2, ("f16", "q4_0"))  # llama-perplexity
    tokens = reference.tokenize([text.read_text(encoding="utf-8")], special=False)[0]
    ours = logit_kld.compare(reference.logits(64, 2), variant.logits(64, 2), logit_kld.chunks_of(tokens, 64, 4))
    print({k: (ours[k], tool[k]) for k in tool})
    assert ours["scored_tokens"] == 4 * 31  # the second half of each 64-token chunk, less its last token
    assert ours["kld_mean"] == pytest.approx(tool["kld_mean"], rel=0.02)
    assert ours["ppl_ratio"] == pytest.approx(tool["ppl_ratio"], rel=1e-3)
    assert ours["same_top_token"] == pytest.approx(tool["same_top_token"], abs=2 / ours["scored_tokens"])


def test_too_short_a_text_is_refused():
    with pytest.raises(EdgetuneError, match="fewer than quality.ctx"):
        logit_kld.chunks_of(list(range(10)), 64, 4)
