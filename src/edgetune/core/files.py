"""Safe outputs, JSONL, the predictions CSV and checksums.

Never lose the user's work: an output is written beside its final path and moved there only when
complete, so an interrupted stage never leaves a half file a later stage trusts; an output folder
carries a marker file, and a folder without it (the user's) is never replaced; an output path
that is the working directory, the home folder, an input or a folder holding one is refused.
"""

import contextlib
import csv
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from edgetune.core.bounds import json_value  # JSON nested no deeper than the parser's stack allows
from edgetune.core.errors import EdgetuneError

MARKER = ".edgetune"  # in every folder edgetune writes: the proof that it may replace that folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_stale(path: Path) -> None:
    """Remove the temporary files or folders a killed run left beside `path` (named `.NAME.*.tmp`, as
    _tmp_beside and atomic_dir name them)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _tmp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file beside `path`."""
    _mkdir(path.parent)
    _clear_stale(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the folder, not the temporary file
        raise OSError(e.errno, e.strerror, str(path.parent)) from None
    os.close(fd)
    return Path(name)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EdgetuneError(
            f"{folder}: a file stands where an output folder should go. Move it, or choose another output path."
        ) from None


def read_text(path) -> str:
    """A text input, with a clear error when it is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise EdgetuneError(
            f"{path}, line {line}: not UTF-8 text (byte {e.object[e.start]:#04x}). Convert the file "
            f"to UTF-8, e.g. `iconv -f GBK -t UTF-8 {path} > utf8.{path.suffix.lstrip('.')}`."
        ) from None


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_predictions(path, actual, predicted) -> None:
    """evaluate's per-example labels: the dvc confusion plot, and the report's paired comparisons."""
    buffer = io.StringIO()  # written by csv, as read_predictions reads it: labels may hold commas or quotes
    csv.writer(buffer, lineterminator="\n").writerows([("actual", "predicted"), *zip(actual, predicted)])
    write_text(path, buffer.getvalue())


def read_predictions(path) -> list[tuple[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [(row["actual"], row["predicted"]) for row in csv.DictReader(f)]


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: file not found. Run the stage that makes it (`dvc repro`).")
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):  # line numbers as editors count them
        if not line.strip():
            continue
        try:
            rows.append(json_value(line, f"{path}, line {n}"))
        except json.JSONDecodeError as e:
            raise EdgetuneError(f"{path}, line {n}: not valid JSON ({e.msg}). Fix or remove that line.") from None
    return rows


@contextlib.contextmanager
def atomic_path(final, suffix: str = ""):
    """Yield a temporary path beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    tmp = _tmp_beside(final, suffix)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # the mode a new file gets (mkstemp's is 0600)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def check_outputs(inputs=(), files=(), folders=(), shared=()) -> None:
    """Refuse, before any work, output paths that would replace what is not the command's own, and
    take each output for this command alone until it ends (release_outputs).

    files    replaced whole: not a folder, not an input, nor inside an input or an output folder
    folders  replaced whole: not an input nor in or around one, and new, empty or this command's
    shared   a folder the command adds named files to, beside other stages' (report's reports/)
    None of them may be the working directory, a folder above it (the filesystem root), home, or a
    path under a file; one that begins with an unexpanded `~` is refused rather than created.
    """
    cwd = Path.cwd().resolve()
    ins = {Path(p).resolve(): p for p in inputs if p is not None}
    outs = [
        (kind, Path(p))
        for kind, paths in (("file", files), ("folder", folders), ("shared", shared))
        for p in paths
        if p is not None
    ]
    seen = set()
    for kind, out in outs:
        where = out.resolve()
        if str(out) in ("", ".") or cwd.is_relative_to(where) or where == Path.home().resolve():
            raise EdgetuneError(
                f"output `{out}` is the working directory, a folder above it or the home folder; "
                "edgetune writes only into a folder of its own. Choose a new folder, e.g. "
                "--out deploy."
            )
        if out.parts[0].startswith("~"):
            raise EdgetuneError(
                f"output `{out}` begins with `~`, which no shell expanded (it was quoted, or came from a "
                "file): edgetune would make a folder named `~`. Write the full path, e.g. $HOME/..."
            )
        if where in seen:
            raise EdgetuneError(f"output `{out}` is given twice; each output needs a path of its own.")
        seen.add(where)
        standing = next((p for p in where.parents if p.exists() and not p.is_dir()), None)
        if standing is not None:
            raise EdgetuneError(
                f"output `{out}`: the file {standing} stands where its folder should go. Move it, or choose "
                "another output path."
            )
        if kind == "shared":
            continue
        for i, given in ins.items():
            if where == i or where.is_relative_to(i) or (kind == "folder" and i.is_relative_to(where)):
                how = "is" if where == i else "is inside" if where.is_relative_to(i) else "holds"
                raise EdgetuneError(
                    f"output `{out}` {how} the input `{given}`; writing there would replace it. Choose "
                    "another output path."
                )
        if kind == "file" and out.is_dir():
            raise EdgetuneError(f"output `{out}` is a folder; give the path of a file.")
        if kind == "folder":
            check_own_folder(out)
    for kind, out in outs:
        inside = next(
            (f for k, f in outs if k == "folder" and out != f and out.resolve().is_relative_to(f.resolve())), None
        )
        if inside is not None:
            raise EdgetuneError(
                f"output `{out}` is inside the output folder `{inside}`, which this command replaces whole. "
                "Choose a path outside it."
            )
    for _, out in outs:
        _take(out)


_held: list = []  # the lock files of the outputs the running command has taken


def _take(out: Path) -> None:
    """Hold `out` for this command: a second command writing the same path at once is told, instead
    of both writing (and one deleting the other's temporary files). The ranks of a distributed run
    share their outputs: the train command that launched them holds them."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    locks = Path(tempfile.gettempdir()) / f"edgetune-locks-{os.getuid()}"  # one user's: another's may not be writable
    locks.mkdir(mode=0o700, exist_ok=True)
    name = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]
    lock = open(locks / name, "a")  # noqa: SIM115 - held open until release_outputs
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EdgetuneError(
            f"output `{out}` is being written by another edgetune command right now. Wait for it to "
            "finish (or stop it), then run this again, or choose another output path."
        ) from None
    _held.append(lock)


def release_outputs() -> None:
    """Let other commands write the outputs this one took (the process's end does it too)."""
    while _held:
        _held.pop().close()


def _writer(folder: Path) -> str | None:
    """`edgetune COMMAND --OPTION`: the running command, and its option that names `folder`, as a
    marker records them; None outside a command (the library called from Python)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    named = [
        p.opts[0]
        for p in ctx.command.params
        if isinstance(ctx.params.get(p.name), (str, Path)) and Path(ctx.params[p.name]) == folder
    ]
    return " ".join([f"edgetune {ctx.info_name}", *named[:1]])


def writer_of(folder: Path) -> str | None:
    """Who wrote `folder`, as its marker says: `edgetune COMMAND --OPTION` (`edgetune COMMAND` for an
    older marker); None when it has no marker."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    found = re.search(r"`(edgetune [^`]*)`", marker.read_text(errors="replace"))
    return found.group(1) if found else "edgetune"


def check_own_folder(folder: Path) -> None:
    """A folder this command may fill or replace: new, empty, or marked as this command's output."""
    if folder.is_file() or folder.is_symlink():
        raise EdgetuneError(f"output `{folder}` is a file or a link, not a folder. Choose another output path.")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    wrote = writer_of(folder)
    if wrote is None:
        raise EdgetuneError(
            f"output folder `{folder}` holds files edgetune did not write (it has no {MARKER} "
            "marker), and replacing it would delete them. Move them away, or choose another output "
            "folder."
        )
    me = _writer(folder)
    command = me and " ".join(me.split()[:2])
    if me is not None and wrote not in ("edgetune", me, command):  # `edgetune COMMAND`: a marker older than the option
        raise EdgetuneError(
            f"output folder `{folder}` was written by `{wrote}`; only that command replaces it. "
            f"Choose another output path for `{me}`."
        )


def mark(folder: Path, named: Path | None = None) -> None:
    """Claim `folder` as the output the running command's option names (`named`, when the folder
    is written elsewhere first): only the same command and option replace it."""
    _mkdir(folder)
    who = _writer(named or folder) or "edgetune"
    (folder / MARKER).write_text(f"written by `{who}`; only that command replaces this folder\n")


@contextlib.contextmanager
def atomic_dir(final):
    """Yield a new temporary folder, marked as the running command's; it replaces folder `final`
    (only a folder this command wrote, or an empty one) if the block succeeds."""
    final = Path(final)
    check_own_folder(final)
    _mkdir(final.parent)
    _clear_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    old = final.with_name(f".{final.name}.old.tmp")
    try:
        mark(tmp, final)
        yield tmp
        check_own_folder(final)  # again: it may have changed while the command ran
        if final.exists():
            os.replace(final, old)  # out of the way first: the new folder lands in one rename
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf(path: Path, whole: bool = True) -> None:
    """A complete GGUF file, or an error naming it: a truncated copy or download, or another format,
    fails here in one line instead of deep inside llama.cpp or transformers. `whole=False` checks
    only that it is there and is a GGUF, for a stage whose llama.cpp tool reads it whole anyway."""
    from edgetune.gguf import header

    if not path.is_file():
        raise EdgetuneError(
            f"{path}: GGUF file not found. `dvc pull {path}` fetches it from the DVC remote; `dvc repro` "
            "builds it. Or fix the path."
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EdgetuneError(
            f"{path}: not a GGUF file (it begins with {magic!r}, not b'GGUF'). Fetch or make it again, "
            "or fix the path."
        )
    if not whole:
        return
    size = path.stat().st_size
    try:
        end = header.read(path).end
    except ValueError as e:
        raise EdgetuneError(
            f"{path}: truncated or damaged GGUF file ({size:,} bytes; {str(e)[:200]}). Fetch or make it again."
        ) from None
    if end > size:
        raise EdgetuneError(
            f"{path}: truncated GGUF file ({size:,} bytes; its tensors need {end:,}). Fetch or make it again."
        )


# Checked readers of weights: an adapter, a GGUF LoRA, safetensors checkpoints. Each refuses a
# damaged file, weights made for another model, and values that are not finite numbers (a training
# run that diverged writes NaN, and every later stage would carry them on silently), in one line
# that names the file and the fix.

NONFINITE_BITS = {  # a float type's exponent bits: all of them set is an infinity or a NaN
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000),
}
CHUNK = 1 << 24  # values checked at a time: a large tensor never needs a second copy in memory


def _count_nonfinite(raw, dtype: str) -> int:
    """NaN and infinite values among the raw bytes of a tensor of `dtype` (a safetensors or GGML type
    name), read as bit patterns (numpy has no bfloat16), a chunk at a time."""
    import numpy as np

    if dtype not in NONFINITE_BITS:  # an integer or 8-bit type: not read as weights here
        return 0
    width, exponent = NONFINITE_BITS[dtype]
    bits = raw.view(width)
    return sum(int(np.count_nonzero((bits[i : i + CHUNK] & exponent) == exponent)) for i in range(0, len(bits), CHUNK))


def _not_finite(path: Path, tensor: str, count: int, total: int, fix: str) -> EdgetuneError:
    return EdgetuneError(
        f"{path}: tensor {tensor} holds {count:,} of {total:,} values that are NaN or infinite. {fix}"
    )


def read_safetensors(path: Path, fix: str, diverged: str | None = None) -> dict[str, tuple[int, ...]]:
    """The tensors of a safetensors file (name -> shape), or an error naming it: a damaged file (its
    fix: `fix`), or, where `diverged` gives the fix for it, a tensor holding NaN or infinite values."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise EdgetuneError(f"{path}: not found. {fix}")
    try:
        with safe_open(path, "numpy") as f:  # checks the header and that the tensors fill the file
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as e:
        raise EdgetuneError(f"{path}: damaged safetensors file ({e}). {fix}") from None
    if diverged:
        data = np.memmap(path, dtype=np.uint8, mode="r")
        header_size = int(data[:8].view("<u8")[0])
        header = json.loads(bytes(data[8 : 8 + header_size]))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = (8 + header_size + offset for offset in info["data_offsets"])
            count = _count_nonfinite(data[begin:end], info["dtype"])
            if count:
                raise _not_finite(path, name, count, max(1, int(np.prod(shapes[name]))), diverged)
    return shapes


def check_checkpoint(folder: Path) -> None:
    """An HF checkpoint's safetensors weights, undamaged and finite."""
    for path in sorted(folder.glob("*.safetensors")):
        read_safetensors(
            path,
            "Make it again (`dvc repro merge`).",
            "Merged from an adapter whose training diverged? Retrain with a lower train.lr in params.yaml (`dvc repro`).",
        )


ADAPTER_KEYS = {"peft_type": str, "r": int, "lora_alpha": (int, float)}  # what merge and convert-lora read


def read_adapter(folder: Path, base: Path | None = None) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A PEFT LoRA adapter folder: its adapter_config.json and its tensors' shapes (name -> shape),
    every value finite; with `base`, an HF checkpoint folder, every LoRA pair must fit the base
    tensor it changes. Anything else is an error naming the file and the fix."""
    retrain = "Train the adapter again (`dvc repro train`)."
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise EdgetuneError(f"{folder}: no adapter_config.json. Run the train stage first (`dvc repro train`).")
    text = read_text(path)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e.msg}, line {e.lineno})"
        raise EdgetuneError(f"{path}: {what}. {retrain}") from None
    if not isinstance(config, dict):
        raise EdgetuneError(f"{path}: holds a JSON {type(config).__name__}, not an object of PEFT settings. {retrain}")
    for key, kind in ADAPTER_KEYS.items():
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            what = f"{value!r}" if key in config else "missing"
            raise EdgetuneError(f"{path}: `{key}` is {what}; PEFT writes it for every LoRA adapter. {retrain}")
    if config["peft_type"] != "LORA":
        raise EdgetuneError(f"{path}: a {config['peft_type']} adapter; edgetune converts and merges LoRA only.")
    if not (folder / "adapter_model.safetensors").is_file():
        raise EdgetuneError(
            f"{folder}: no adapter_model.safetensors (adapters are read as safetensors only). {retrain}"
        )
    shapes = read_safetensors(
        folder / "adapter_model.safetensors",
        retrain,
        "Its training diverged: retrain with a lower train.lr in params.yaml (`dvc repro train`).",
    )
    if not any(".lora_" in name for name in shapes):
        raise EdgetuneError(f"{folder / 'adapter_model.safetensors'}: holds no LoRA tensors. {retrain}")
    if base is not None:
        _check_fits(folder, base, config, shapes)
    return config, shapes


def _check_fits(folder: Path, base: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every LoRA pair A, B of the adapter multiplies to the shape of the base tensor it is added to."""
    weights = {}
    for path in base.glob("*.safetensors"):
        weights.update(read_safetensors(path, "Fetch the base model again (`dvc repro fetch-model`)."))
    if not weights:
        return  # nothing to compare with: loading the base fails with its own message
    for name, a in shapes.items():
        # PEFT's names: base_model.model.<module>.lora_A.weight. A linear layer's A is (r, in) and B
        # (out, r), for its weight (out, in); an embedding's A is (r, rows) and B (columns, r).
        module, linear, _ = name.removeprefix("base_model.model.").rpartition(".lora_A.")
        if not linear:
            module, embedding, _ = name.removeprefix("base_model.model.").rpartition(".lora_embedding_A")
            if not embedding:
                continue
        b = shapes.get(name.replace("lora_A.", "lora_B.").replace("lora_embedding_A", "lora_embedding_B"))
        weight = weights.get(f"{module}.weight")
        if weight is None:
            problem = f"it changes {module}, which the base does not have"
        elif b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problem = f"{name} is {list(a)} and has no lora_B that it multiplies with"
        else:
            update = (b[0], a[1]) if linear else (a[1], b[0])
            if update == weight:
                continue
            problem = f"{module}.weight is {list(weight)} in the base, the adapter's update to it {list(update)}"
        raise EdgetuneError(
            f"{folder}: this adapter does not fit the base model in {base} (it was trained on "
            f"{config.get('base_model_name_or_path')}): {problem}. Retrain it on this base (`dvc repro train`) "
            "or point --base at the model it was made for."
        )


def check_lora(base: Path, lora: Path) -> None:
    """A GGUF LoRA that llama.cpp can apply on the GGUF `base`, or an error naming it: each of its
    X.lora_a, X.lora_b pairs fits the base's tensor X as llama.cpp requires (one made for another
    model crashes llama-cpp-python), and every value is finite."""
    import numpy as np
    from gguf.quants import dequantize

    from edgetune.gguf import header

    check_gguf(base)
    check_gguf(lora)
    model, adapter = header.read(base), header.read(lora)
    kind = adapter.fields.get("general.type"), adapter.fields.get("adapter.type")
    if kind != ("adapter", "lora"):
        raise EdgetuneError(
            f"{lora}: not a GGUF LoRA (general.type is {kind[0]!r}). Give the adapter that "
            "`edgetune convert-lora` wrote (models/gguf/<name>-lora.gguf)."
        )
    shapes = {t.name: t.shape for t in model.tensors}
    pairs = {}
    for t in adapter.tensors:
        stem, _, part = t.name.rpartition(".")
        if part in ("lora_a", "lora_b"):
            pairs.setdefault(stem, {})[part] = t.shape
    if not pairs:
        raise EdgetuneError(f"{lora}: holds no LoRA tensors. Convert the adapter again (`dvc repro convert-lora`).")
    for name, pair in sorted(pairs.items()):
        # ggml's order, the fastest dimension first: the base's X is (in, out), A is (in, r) and B (r, out);
        # the token embedding's A is stored transposed (llama.cpp's llama-adapter.cpp checks the same)
        a, b, want = pair.get("lora_a"), pair.get("lora_b"), shapes.get(name)
        if want is None:
            problem = f"it changes {name}, which the base does not have"
        elif a is None or b is None or len(a) != 2 or len(b) != 2:
            problem = f"{name} has no complete lora_a, lora_b pair"
        elif name.endswith("token_embd.weight"):
            problem = None if (b[1], a[1]) == tuple(want) and a[0] == b[0] else f"{name} is {list(want)}"
        else:
            problem = None if (a[0], b[1]) == tuple(want) and a[1] == b[0] else f"{name} is {list(want)}"
        if problem:
            raise EdgetuneError(
                f"{lora}: this LoRA does not fit the base {base}: {problem} (lora_a {list(a or ())}, lora_b "
                f"{list(b or ())}); it was made for another model. Use the base it was trained on, or convert "
                "the adapter trained on this one (`dvc repro convert-lora`)."
            )
    data = np.memmap(lora, dtype=np.uint8, mode="r")
    for t in adapter.tensors:
        raw = data[t.offset : t.offset + t.n_bytes]
        if t.type.name in NONFINITE_BITS:
            count = _count_nonfinite(raw, t.type.name)
        else:  # a quantized type: its values, dequantized
            count = int(np.count_nonzero(~np.isfinite(dequantize(raw, t.type))))
        if count:
            raise _not_finite(
                lora,
                t.name,
                count,
                t.n_elements,
                "The adapter it came from diverged in training: retrain with a lower train.lr in params.yaml (`dvc repro`).",
            )


def read_checksums(path: Path) -> dict[str, str]:
    """A SHA256SUMS file (file name -> sha256) as `sha256sum` writes and checks it, or an error naming
    the line: each holds a digest and the plain name of a file in the same folder, so that checking
    the files reads none outside it."""
    again = "Export the bundle again (`edgetune export`)."
    sums = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise EdgetuneError(f"{path}, line {n}: `{line}` is not `<sha256>  <file name>`. {again}")
        digest = fields[0].lower()  # as sha256_file gives it
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise EdgetuneError(f"{path}, line {n}: `{fields[0]}` is not a sha256 (64 hex digits). {again}")
        mode, name = line[64:66], line[66:]  # two spaces, or ` *` (sha256sum's binary mode), then the name
        if mode not in ("  ", " *"):
            raise EdgetuneError(f"{path}, line {n}: `{line}` is not `<sha256>  <file name>`. {again}")
        if name in ("", ".", "..") or Path(name).name != name or glob.has_magic(name) or "\\" in name:
            raise EdgetuneError(
                f"{path}, line {n}: `{name}` is not the name of a file beside it (no folders, `..`, "
                f"absolute paths or wildcards). {again}"
            )
        if name in sums:
            raise EdgetuneError(f"{path}, line {n}: `{name}` is listed twice. {again}")
        sums[name] = digest
    if not sums:
        raise EdgetuneError(f"{path}: lists no files. {again}")
    return sums


def write_checksums(path: Path, sums: dict[str, str]) -> None:
    """SHA256SUMS as read_checksums reads it, and `sha256sum -c` checks it."""
    write_text(path, "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
