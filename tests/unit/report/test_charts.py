"""The report's charts: PNGs the same figures draw byte for byte, and the loss chart's epochs."""


def test_charts_are_pngs_that_the_same_figures_draw_the_same(tmp_path):
    import matplotlib.image

    from edgetune.report import charts

    variants = {
        "f16": {"accuracy": 0.826, "model_bytes": 1266e6, "bits_per_weight": 16.0},
        "q4_k_m": {"accuracy": 0.796, "model_bytes": 491e6, "bits_per_weight": 6.16, "kld_mean": 0.0662},
        "q4_k_m+lora": {"accuracy": 0.826, "model_bytes": 500e6, "bits_per_weight": 6.27, "kld_mean": 0.0012},
    }
    for name in ("a.png", "b.png"):
        assert charts.accuracy_vs_size(variants, "accuracy", ["q4_k_m", "q4_k_m+lora"], "q4_k_m+lora", tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # no date inside: DVC sees no change
    assert matplotlib.image.imread(tmp_path / "a.png").shape == (400, 640, 4)
    assert charts.kld_vs_bits(variants, tmp_path / "kld.png") and (tmp_path / "kld.png").stat().st_size > 0
    bench = {"threads": [1, 2], "variants": {"q4_k_m": {"completion": {"tg_tokens_per_second": 62.0}}}}
    assert charts.speed(bench, tmp_path / "speed.png")
    # nothing to draw: no file, and the report shows no picture for it
    assert (
        not charts.kld_vs_bits({"f16": variants["f16"]}, tmp_path / "none.png")
        and not (tmp_path / "none.png").exists()
    )
    assert not charts.speed({}, tmp_path / "none.png")


def test_the_loss_chart_places_each_row_at_the_epoch_dvclive_logged_with_it(tmp_path):
    from edgetune.report import charts

    metrics = tmp_path / "plots" / "metrics"
    (metrics / "eval").mkdir(parents=True)
    # dvclive's layout: a training row at steps 0, 1 and 3, an evaluation at step 2, the summary at 4
    (metrics / "epoch.tsv").write_text("step\tepoch\n0\t0.25\n1\t0.5\n2\t0.5\n3\t0.75\n4\t1.0\n")
    (metrics / "loss.tsv").write_text("step\tloss\n0\t0.9\n1\t0.6\n3\t0.4\n")
    (metrics / "eval" / "loss.tsv").write_text("step\tloss\n2\t0.55\n")
    assert charts.loss_curves(tmp_path) == {"training": {0.25: 0.9, 0.5: 0.6, 0.75: 0.4}, "validation": {0.5: 0.55}}
    assert charts.loss(tmp_path, tmp_path / "loss.png") and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not charts.loss(tmp_path / "no-run", tmp_path / "none.png") and not (tmp_path / "none.png").exists()
