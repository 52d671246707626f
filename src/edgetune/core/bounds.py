"""Bounds on what an input file may be and hold, so that a hostile or broken one fails in one line
instead of blocking, or filling the memory or the stack.

  the file        a regular file: a FIFO would block its reader, a device such as /dev/zero never
                  ends, a link that loops leads nowhere (each named as what it is)
  a line          at most MAX_LINE_CHARS characters (JSONL, CSV, TSV, YAML data)
  JSON            nested at most MAX_JSON_DEPTH deep (Python's parser recurses once a level)
  YAML            read by PyYAML's safe loader with three rules more: aliases may repeat at most
                  MAX_ALIAS_NODES values (a few hundred bytes of nested aliases can stand for
                  billions, "billion laughs"), nesting at most MAX_YAML_DEPTH deep, and no key
                  twice in one mapping (YAML would keep the last one silently)

Each check names the input as the caller gives it (`where`: a file, a line) in its error.
"""

import errno
import json
import re
import stat
from pathlib import Path

import yaml

from edgetune.core.errors import EdgetuneError

MAX_LINE_CHARS = 2**20
MAX_JSON_DEPTH = 64
MAX_ALIAS_NODES = 10_000
MAX_YAML_DEPTH = 64

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = re.compile(r"[^][{}]+")


KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def check_regular_file(path: Path, where: str) -> None:
    """`path` is a regular file (through links), or an error saying what is there instead. Only its
    type is looked at: a FIFO is never opened."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise EdgetuneError(
                f"{where}: a symbolic link that loops (following it leads back to it). Fix the link, or the path."
            ) from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise EdgetuneError(f"{where}: file not found. Fix the path in params.yaml.") from None
        raise EdgetuneError(f"{where}: {e.strerror}. Fix the path in params.yaml.") from None
    if not stat.S_ISREG(mode):
        what = next((name for test, name in KINDS.items() if test(mode)), "something else")
        raise EdgetuneError(f"{where}: not a regular file but {what}. Point it at a file in params.yaml.")


def check_line(line: str, where: str) -> None:
    if len(line) > MAX_LINE_CHARS:
        raise EdgetuneError(
            f"{where}: {len(line):,} characters, more than the {MAX_LINE_CHARS:,} a line may hold. "
            "Shorten or remove that line."
        )


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, counted without parsing it (brackets inside
    strings do not count)."""
    depth = deepest = 0
    for bracket in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def json_value(text: str, where: str):
    """JSON text parsed, once its nesting is within bounds; json.JSONDecodeError as json raises it."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise EdgetuneError(
            f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep. Flatten or remove that record."
        )
    return json.loads(text)


def load_yaml(text: str, path) -> object:
    """YAML text (the file `path`) as data, read within the bounds; an error naming the file and
    line otherwise."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise EdgetuneError(f"{path}, line {e.line}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        where = f", line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise EdgetuneError(f"{path}{where}: not valid YAML ({e.problem or e.context}). Fix it.") from None
    except yaml.YAMLError as e:
        raise EdgetuneError(f"{path}: not valid YAML ({str(e)[:200]}). Fix it.") from None
    finally:
        loader.dispose()


class _Refused(yaml.YAMLError):
    """YAML beyond a bound, at the node where it went beyond it."""

    def __init__(self, message: str, node):
        super().__init__(message)
        self.message, self.line = message, node.start_mark.line + 1


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0  # of the node being composed
        self.repeated = 0  # values the aliases so far repeat
        self.open = set()  # anchors of the collections being composed

    def compose_node(self, parent, index):
        event = self.peek_event()
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep. Flatten it.", event)
            if isinstance(event, yaml.AliasEvent):
                return self.compose_alias(event, parent, index)
            anchor = event.anchor if isinstance(event, yaml.CollectionStartEvent) else None
            self.open.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.open.discard(anchor)
        finally:
            self.depth -= 1

    def compose_alias(self, event, parent, index):
        """The anchored node an alias repeats, counted as if written out there."""
        if event.anchor in self.open:
            raise _Refused(f"alias *{event.anchor} is inside its own anchor, so it never ends. Remove it.", event)
        node = super().compose_node(parent, index)
        values, depth = _written_out(node)
        self.repeated += values
        if self.repeated > MAX_ALIAS_NODES:
            raise _Refused(
                f"its aliases (*name) repeat more than {MAX_ALIAS_NODES:,} values. Write the values out, "
                "without anchors (&name) and aliases.",
                event,
            )
        if self.depth - 1 + depth > MAX_YAML_DEPTH:
            raise _Refused(
                f"alias *{event.anchor} nests values more than {MAX_YAML_DEPTH} levels deep. Flatten it.", event
            )
        return node

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # a merge (<<) may be overridden; a list or mapping as a key fails below
            key = self.construct_object(key_node)
            if key in first_line:
                raise _Refused(
                    f"key `{str(key)[:200]}` is given twice in one mapping (first on line {first_line[key]}); "
                    "YAML would keep only the last. Remove or rename one.",
                    key_node,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _written_out(node) -> tuple[int, int]:
    """The number of values in `node` and how deep they nest, its aliases written out; counted only
    until a bound is passed."""
    values = deepest = 0
    todo = [(node, 1)]
    while todo and values <= MAX_ALIAS_NODES and deepest <= MAX_YAML_DEPTH:
        node, depth = todo.pop()
        values, deepest = values + 1, max(deepest, depth)
        if isinstance(node, yaml.SequenceNode):
            todo += [(child, depth + 1) for child in node.value]
        elif isinstance(node, yaml.MappingNode):
            todo += [(child, depth + 1) for pair in node.value for child in pair]
    return values, deepest
