"""The other runtimes' section says which file to ship for each, and where a runtime's own rounding
moves the model, the fix (lora.train_on naming that runtime's type)."""

from conftest import committed

from edgetune.report.runtime_tables import runtimes_table


def record(accuracy: float, kld: float, mb: float) -> dict:
    return {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.03, accuracy + 0.03], "n_samples": 500,
            "kld_mean": kld, "same_top_token": 0.9, "model_bytes": mb * 1e6, "runtime": "ONNX Runtime GenAI"}  # fmt: skip


RUNTIMES = {"onnx-int4+lora": record(0.83, 0.127, 450), "onnx-int8+lora": record(0.82, 0.004, 700)}
VARIANTS = {"f16": record(0.826, 0.0, 1266), "q4_k_m+lora": record(0.82, 0.0012, 500)}


def test_the_smallest_close_variant_ships_and_the_drifting_one_is_told_how_to_train_on_its_base():
    p = committed("recommend")
    assert p.max_kld < 0.127
    text = "\n".join(runtimes_table(RUNTIMES, VARIANTS, {}, "q4_k_m+lora", p, "q4_k_m"))
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| q4_k_m+lora", "| onnx-int4+lora", "| onnx-int8+lora"
    ]  # fmt: skip
    assert "**To ship in ONNX Runtime GenAI:** onnx-int8+lora (the smallest within" in text
    assert "`deploy-onnx/int8/`" in text
    assert "**onnx-int4+lora drifts from f16** (KLD 0.1270" in text
    assert (
        "`dvc exp run -S 'runtimes.onnx=[int4,int8]' -S lora.train_on=onnx-int4 "
        "-S lora.train_on_file=models/onnx/int4-base/model.onnx`" in text
    )
    assert "onnx-int8+lora drifts" not in text


def test_trained_on_the_runtimes_own_base_it_says_so_instead():
    text = "\n".join(runtimes_table(RUNTIMES, VARIANTS, {}, "q4_k_m+lora", committed("recommend"), "onnx-int4"))
    assert "drifts" not in text
    assert "trained on onnx-int4's own base (lora.train_on: onnx-int4): onnx-int4+lora is the model trained" in text
    far = {"onnx-int4+lora": record(0.70, 0.2, 450)}
    text = "\n".join(runtimes_table(far, VARIANTS, {}, None, committed("recommend"), "q4_k_m"))
    assert "onnx-int4+lora (none is within tolerance; the closest to f16)" in text
