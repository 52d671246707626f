"""Stage baseline: the classical yardstick, TF-IDF character n-grams + logistic regression.

Trained on the same train split in seconds; every report shows what the LLM buys over it.
"""

import time
from pathlib import Path

import click

from edgetune.core import tasks
from edgetune.core.files import read_jsonl, write_json
from edgetune.core.labels import classification_metrics
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.variants import TFIDF


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
@reads("baseline", "data.task", "data.labels")
def baseline(data: Path, out: Path, params):
    """Train and test the TF-IDF + logistic regression baseline on DATA's splits."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    check_outputs(inputs=[data], files=[out])
    p = params.baseline
    if params.data.task == "sft":
        write_json(out, {"variant": TFIDF, "skipped": "data.task is sft: no labels to classify"})
        click.echo("tfidf: skipped, the data are conversations")
        return
    labels = list(params.data.labels)
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
    result.update(variant=TFIDF, seconds_per_sample=seconds / len(test), model_bytes=None, n_train=len(train))
    write_json(out, result)
    click.echo(f"tfidf: accuracy {result['accuracy']:.3f}, f1 {result['f1']:.3f} ({len(train)} training texts)")
