"""What a params.yaml value may be: the rules a section's field carries with `typing.Annotated`.

Annotated[int, Range(min=1)]                   a number within bounds
Annotated[str, OneOf("bfloat16", "float32")]   one of a few words
Name                                           anything that becomes part of a file name or a
                                               command line: letters, digits, `.`, `_` and `-`
"""

import dataclasses
import re
from typing import Annotated


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numbers: min/max inclusive, above/below exclusive, plus any of `also` (a sentinel such as -1)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    also: tuple = ()

    def allows(self, v) -> bool:
        if v in self.also:
            return True
        return (
            (self.min is None or v >= self.min)
            and (self.max is None or v <= self.max)
            and (self.above is None or v > self.above)
            and (self.below is None or v < self.below)
        )

    def __str__(self) -> str:
        bounds = [
            f">= {self.min}" if self.min is not None else "",
            f"> {self.above}" if self.above is not None else "",
            f"<= {self.max}" if self.max is not None else "",
            f"< {self.below}" if self.below is not None else "",
        ]
        text = " and ".join(b for b in bounds if b)
        return text + "".join(f", or {a}" for a in self.also)


@dataclasses.dataclass(frozen=True)
class OneOf:
    choices: tuple

    def __init__(self, *choices):
        object.__setattr__(self, "choices", choices)

    def allows(self, v) -> bool:
        return v in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclasses.dataclass(frozen=True)
class Pattern:
    regex: str
    meaning: str

    def allows(self, v) -> bool:
        return re.fullmatch(self.regex, v) is not None

    def __str__(self) -> str:
        return self.meaning


# Names end up in file names, dvc.yaml commands and exported scripts: nothing a shell would read.
Name = Annotated[
    str, Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]*", "letters, digits, '.', '_' and '-' (starting with a letter or digit)")
]
# A project path read in a dvc.yaml command: Names joined by '/'.
ProjectPath = Annotated[
    str, Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*", "a relative path of Names joined by '/'")
]
Positive = Annotated[int, Range(min=1)]
# What a machine holds at once, bounded far above any real run: a slip such as 10**9 fails here,
# not as an allocation deep inside torch. (A rule of its own: a value below 1 is told `>= 1`.)
BatchSize = Annotated[Positive, Range(max=4096)]
Tokens = Annotated[Positive, Range(max=2**20)]
# A variant in params (evaluate.free_answer, export.variant): a Name, or a quant type with +lora.
Variant = Annotated[
    str,
    Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]*(\+lora)?", "a variant: f16, base, a quant type, or a quant type with +lora"),
]
