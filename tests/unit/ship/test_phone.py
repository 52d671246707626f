"""phone-check's parts that need no emulator: reading a bundle and the labels it compares. The check
itself runs on the tiny pipeline's bundle (tests/e2e/test_bundle.py)."""

import shutil

import pytest

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import sha256_file
from edgetune.ship.phone import label_tokens, read_bundle


def bundle(folder, gguf, lora=None):
    """A bundle as export writes it, of the files phone-check reads."""
    folder.mkdir()
    files = [shutil.copy(gguf, folder / "m-base-q8_0.gguf")]
    if lora:
        files.append(shutil.copy(lora, folder / "m-lora.gguf"))
    (folder / "SHA256SUMS").write_text("".join(f"{sha256_file(f)}  {f.name}\n" for f in files))
    (folder / "Modelfile").write_text(
        f"FROM ./{files[0].name}\n" + (f"ADAPTER ./{files[1].name}\n" if lora else "") + "PARAMETER temperature 0.7\n"
    )
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    return folder


def test_a_bundle_names_its_model_and_adapter_and_every_file_is_checked(tmp_path, tiny_gguf):
    files, template, sums = read_bundle(bundle(tmp_path / "with", tiny_gguf, lora=tiny_gguf))
    assert sums == {name: sha256_file(tiny_gguf) for name in ("m-base-q8_0.gguf", "m-lora.gguf")}
    assert (files.gguf.name, files.lora.name, template) == (
        "m-base-q8_0.gguf",
        "m-lora.gguf",
        "{{ messages[0]['content'] }}",
    )
    files, _, _ = read_bundle(bundle(tmp_path / "without", tiny_gguf))
    assert files.gguf.name == "m-base-q8_0.gguf" and files.lora is None

    changed = bundle(tmp_path / "changed", tiny_gguf)
    with (changed / "m-base-q8_0.gguf").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgetuneError, match=r"m-base-q8_0\.gguf: missing or not the file SHA256SUMS names"):
        read_bundle(changed)
    (changed / "Modelfile").unlink()
    with pytest.raises(EdgetuneError, match=r"Modelfile: not found; is .* a bundle written by `edgetune export`"):
        read_bundle(changed)


def test_labels_are_told_apart_by_their_first_token(tiny_gguf):
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    first = [vocab.tokenize(w.encode(), add_bos=False, special=False)[0] for w in ("正面", "负面")]
    assert label_tokens(vocab, {"positive": "正面", "negative": "负面"}) == first
    with pytest.raises(EdgetuneError, match="data.labels .* start with the same token"):
        label_tokens(vocab, {"positive": "正面", "mixed": "正面负面"})
