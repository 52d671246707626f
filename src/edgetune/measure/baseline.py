"""Stage baseline: the classical yardstick, TF-IDF character n-grams + logistic regression.

Trained on the same train split in seconds; every report shows what the LLM buys over it.
"""

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import click

from edgetune.core import params, tasks
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import check_outputs, read_jsonl, write_json
from edgetune.core.labels import classification_metrics
from edgetune.core.params import Positive, Range


@dataclasses.dataclass
class BaselineParams:
    ngram_min: Positive
    ngram_max: Positive
    C: Annotated[float, Range(above=0)]  # inverse regularisation strength

    def __post_init__(self):
        if self.ngram_max < self.ngram_min:
            raise EdgetuneError(
                f"params.yaml: baseline.ngram_max ({self.ngram_max}) is below baseline.ngram_min ({self.ngram_min})."
            )


@click.command("baseline")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("data/processed"),
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/eval/tfidf.json"),
    show_default=True,
)
def baseline(data: Path, out: Path):
    """Train and test the TF-IDF + logistic regression baseline on DATA's splits."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    check_outputs(inputs=[data], files=[out])
    p = params.load("baseline", BaselineParams)
    if tasks.task() == "sft":
        write_json(out, {"variant": "tfidf", "skipped": "data.task is sft: no labels to classify"})
        click.echo("tfidf: skipped, the data are conversations")
        return
    labels = list(params.value("data.labels", dict[str, str]))
    train, test = (tasks.check_rows(read_jsonl(data / f), "classify", data / f) for f in ("train.jsonl", "test.jsonl"))
    model = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(p.ngram_min, p.ngram_max), sublinear_tf=True),
        LogisticRegression(C=p.C, max_iter=1000),
    )
    model.fit([r["text"] for r in train], [r["label"] for r in train])
    start = time.perf_counter()
    predicted = model.predict([r["text"] for r in test]).tolist()
    seconds = time.perf_counter() - start
    result = classification_metrics([r["label"] for r in test], predicted, labels)
    result.pop("unparsed")
    result.update(variant="tfidf", seconds_per_sample=seconds / len(test), model_bytes=None, n_train=len(train))
    write_json(out, result)
    click.echo(f"tfidf: accuracy {result['accuracy']:.3f}, f1 {result['f1']:.3f} ({len(train)} training texts)")
