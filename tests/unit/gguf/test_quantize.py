"""quantize: a base already of the type is shipped byte for byte (another type is rounded again from
it, and says so), and per-tensor overrides reach llama-quantize."""

import json

from conftest import run, set_params


def test_a_base_already_of_the_type_is_shipped_byte_for_byte(workdir, tiny_gguf):
    q8 = workdir / "q8_0.gguf"
    assert (
        run("quantize", "--model", tiny_gguf, "--type", "q8_0", "--out", q8, "--stats", workdir / "a.json").exit_code
        == 0
    )
    again = workdir / "again.gguf"
    result = run("quantize", "--model", q8, "--type", "q8_0", "--out", again, "--stats", workdir / "b.json")
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == q8.read_bytes()
    stats = json.loads((workdir / "b.json").read_text())
    assert stats["copied"] is True and stats["source_type"] == "q8_0"
    # another type from a quantized source can only be rounded again, and says so
    result = run(
        "quantize", "--model", q8, "--type", "q4_0", "--out", workdir / "q4.gguf", "--stats", workdir / "c.json"
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((workdir / "c.json").read_text())
    assert stats["copied"] is False and stats["source_type"] == "q8_0" and "q4_0" in stats["tensor_types"]


def test_per_tensor_overrides_reach_llama_quantize(workdir, tiny_gguf):
    from edgetune.gguf import header as gguf_header

    set_params(workdir, quantize={"tensor_types": {"ffn_down": "q8_0"}, "token_embedding_type": "q8_0"})
    out = workdir / "q4_0.gguf"
    result = run("quantize", "--model", tiny_gguf, "--type", "q4_0", "--out", out, "--stats", workdir / "s.json")
    assert result.exit_code == 0, result.output
    types = {t.name: t.type.name for t in gguf_header.read(out).tensors}
    assert {types[n] for n in types if "ffn_down" in n} == {"Q8_0"} and types["token_embd.weight"] == "Q8_0"
    assert {types[n] for n in types if "ffn_up" in n} == {"Q4_0"}  # the others keep the type asked for
