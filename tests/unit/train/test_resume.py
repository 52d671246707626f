"""Resuming a killed run: dvclive's log picked up at the step after the last one logged."""

import json


def test_a_run_killed_while_dvclive_wrote_its_summary_resumes_at_the_last_step(tmp_path, monkeypatch):
    from edgetune.train.resume import open_live

    monkeypatch.chdir(tmp_path)
    live_dir = tmp_path / "live"
    (live_dir / "plots" / "metrics" / "eval").mkdir(parents=True)
    (live_dir / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n0\t2.5\n1\t2.1\n2\t1.9\n")
    (live_dir / "plots" / "metrics" / "eval" / "loss.tsv").write_text("step\tloss\n1\t2.0\n")
    (live_dir / "metrics.json").write_text("")  # the kill landed inside dvclive's rewrite
    live = open_live(live_dir, resume=True)
    assert live.step == 3  # the step after the last one logged
    live.log_metric("loss", 1.7)
    live.next_step()
    live.end()
    rows = (live_dir / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert json.loads((live_dir / "metrics.json").read_text())["loss"] == 1.7
