"""The GGUF header reader every stage uses agrees with gguf-py's GGUFReader, field by field and
tensor by tensor, and refuses a damaged file in one line."""

import struct

import pytest
from conftest import run

from edgetune.core.errors import EdgetuneError
from edgetune.gguf import header as gguf_header
from edgetune.gguf.files import check_gguf


@pytest.fixture(scope="module")
def ggufs(tiny_gguf, tmp_path_factory) -> list:
    """The tiny f16 GGUF, its q4_k_m (k-quants, and their 32-block fallbacks), and a LoRA GGUF."""
    folder = tmp_path_factory.mktemp("headers")
    q4 = folder / "q4_k_m.gguf"
    result = run("quantize", "--model", tiny_gguf, "--type", "q4_k_m", "--out", q4, "--stats", folder / "q4.json")
    assert result.exit_code == 0, result.output
    return [tiny_gguf, q4]


def test_the_header_is_what_gguf_py_reads(ggufs):
    from gguf import GGUFReader

    for path in ggufs:
        theirs, ours = GGUFReader(path), gguf_header.read(path)
        assert [(t.name, t.type, t.shape, t.offset, t.n_bytes) for t in ours.tensors] == [
            (t.name, t.tensor_type, tuple(int(d) for d in t.shape), int(t.data_offset), int(t.n_bytes))
            for t in theirs.tensors
        ]
        assert ours.data_offset == theirs.data_offset and ours.end == path.stat().st_size
        keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
        assert list(ours.fields) == keys
        for key in keys:
            field, value = theirs.fields[key], ours.fields[key]
            if isinstance(value, gguf_header.LongArray):  # the vocabulary: its type and length only
                assert (value.type, value.length) == (field.types[1], len(field.data)) and value.length > 1024
            else:
                assert value == field.contents(), key
        assert sum(isinstance(v, gguf_header.LongArray) for v in ours.fields.values()) == 3  # tokens, types, merges


def test_a_second_read_of_the_same_file_is_not_parsed_again(ggufs, tmp_path):
    first = gguf_header.read(ggufs[0])
    assert gguf_header.read(ggufs[0]) is first
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(ggufs[0].read_bytes())
    assert gguf_header.read(copy) is not first and gguf_header.read(copy) == first  # another file: read anew


def cuts(path) -> dict[str, bytes]:
    """The file cut short inside each part of its header, and inside its tensors' bytes."""
    data, header = path.read_bytes(), gguf_header.read(path)
    return {
        "empty": b"",
        "magic only": data[:4],
        "inside the counts": data[:20],
        "inside the vocabulary": data[: header.data_offset // 2],
        "inside the tensor list": data[: header.data_offset - 40],
        "inside the tensors' bytes": data[: (header.data_offset + header.end) // 2],
        "one byte short": data[:-1],
    }


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "magic only",
        "inside the counts",
        "inside the vocabulary",
        "inside the tensor list",
        "inside the tensors' bytes",
        "one byte short",
    ],
)
def test_a_truncated_file_is_named_as_such(ggufs, tmp_path, name):
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(cuts(ggufs[0])[name])
    with pytest.raises(EdgetuneError) as e:
        check_gguf(damaged)
    message = str(e.value)
    assert message.startswith(f"{damaged}: ") and "Fetch or make it again" in message
    assert ("truncated" in message) or (name in ("empty", "magic only") and "GGUF" in message)


@pytest.mark.parametrize(
    "offset, value, needle",
    [
        (4, struct.pack("<I", 9), "GGUF version 9"),  # an unknown version
        (8, struct.pack("<Q", 2**40), "damaged GGUF"),  # a bogus tensor count: the header runs out first
        (16, struct.pack("<Q", 2**40), "damaged GGUF"),  # a bogus key count
    ],
)
def test_a_damaged_header_is_named(ggufs, tmp_path, offset, value, needle):
    data = bytearray(ggufs[0].read_bytes())
    data[offset : offset + len(value)] = value
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bytes(data))
    with pytest.raises(EdgetuneError, match=needle):
        check_gguf(damaged)
