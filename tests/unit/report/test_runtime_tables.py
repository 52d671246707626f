"""The other runtimes' section says which file to ship for each, and where a runtime's own rounding
moves the model, the fix (lora.train_on naming that runtime's type)."""

from conftest import committed

from edgetune.report.runtime_tables import runtimes_table


def record(accuracy: float, kld: float, mb: float, runtime: str = "ONNX Runtime GenAI") -> dict:
    return {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.03, accuracy + 0.03], "n_samples": 500,
            "kld_mean": kld, "same_top_token": 0.9, "model_bytes": mb * 1e6, "runtime": runtime}  # fmt: skip


RUNTIMES = {
    "onnx-int4+lora": record(0.83, 0.127, 450),
    "onnx-int8+lora": record(0.82, 0.004, 700),
    "executorch-8da4w+lora": record(0.81, 0.06, 430, "ExecuTorch (XNNPACK)"),
    "litert-int8": record(0.825, 0.004, 680, "LiteRT (XNNPACK)"),
    "litert-int4": record(0.75, 0.11, 350, "LiteRT (XNNPACK)"),
}
VARIANTS = {"f16": record(0.826, 0.0, 1266), "q4_k_m+lora": record(0.82, 0.0012, 500)}


def test_the_smallest_close_variant_ships_and_the_drifting_one_is_told_how_to_train_on_its_base():
    p = committed("recommend")
    assert p.max_kld < 0.127
    text = "\n".join(runtimes_table(RUNTIMES, VARIANTS, {}, "q4_k_m+lora", p, "q4_k_m"))
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| q4_k_m+lora", "| onnx-int4+lora", "| onnx-int8+lora", "| executorch-8da4w+lora", "| litert-int8",
        "| litert-int4",
    ]  # fmt: skip
    assert "**To ship in ONNX Runtime GenAI:** onnx-int8+lora (the smallest within" in text
    assert "`deploy-onnx/int8/`" in text
    assert "**onnx-int4+lora drifts from f16** (KLD 0.1270" in text
    assert (
        "`dvc exp run -S 'runtimes.onnx=[int4,int8]' -S lora.train_on=onnx-int4 "
        "-S lora.train_on_file=models/onnx/int4-base/model.onnx`" in text
    )
    assert "onnx-int8+lora drifts" not in text
    # each runtime its own file, in its own folder, whether or not it is within the tolerances
    assert "**To ship in ExecuTorch (XNNPACK):** executorch-8da4w+lora (none is within tolerance" in text
    assert "`deploy-executorch/8da4w/`" in text
    assert "**executorch-8da4w+lora drifts from f16** (KLD 0.0600" in text
    assert "lora.train_on cannot name this runtime's types yet" in text
    assert "runtimes.onnx=[int4,int8]" in text  # the ONNX fix names the ONNX types alone
    # a runtime that ships the adapter merged: its drift is the merged model rounded, and no train_on fix
    assert "**To ship in LiteRT (XNNPACK):** litert-int8 (the smallest within" in text
    assert "`deploy-litert/int8/`" in text
    assert "**litert-int4 drifts from f16** (KLD 0.1100" in text
    assert "the merged model is rounded, adapter and all" in text.split("litert-int4 drifts")[1].split("\n")[0]
    assert "litert-int8 drifts" not in text


def test_trained_on_the_runtimes_own_base_it_says_so_instead():
    onnx = {n: v for n, v in RUNTIMES.items() if n.startswith("onnx-")}
    text = "\n".join(runtimes_table(onnx, VARIANTS, {}, "q4_k_m+lora", committed("recommend"), "onnx-int4"))
    assert "drifts" not in text
    assert "trained on onnx-int4's own base (lora.train_on: onnx-int4): onnx-int4+lora is the model trained" in text
    far = {"onnx-int4+lora": record(0.70, 0.2, 450)}
    text = "\n".join(runtimes_table(far, VARIANTS, {}, None, committed("recommend"), "q4_k_m"))
    assert "onnx-int4+lora (none is within tolerance; the closest to f16)" in text


def test_core_ml_shows_what_was_verified_and_that_it_was_not_run():
    from edgetune.report.runtime_tables import coreml_table

    def verified(mean: float, kld: float) -> dict:
        ranges = {"ranges": [[1, 1], [2, 512]], "dtype": "INT32", "shape": [1, 2]}
        return {"spec_version": 9, "inputs": {"input_ids": ranges, "attention_mask": ranges},
                "compressed_tensors": 169, "matrices": 169, "weight_error": {"mean": mean, "max": 2 * mean},
                "weights_in_pytorch": {"kld_mean": kld, "same_top_token": 0.8}, "model_bytes": 350e6}  # fmt: skip

    text = "\n".join(coreml_table({"coreml-int4": verified(0.11, 0.08), "coreml-int8": verified(0.01, 0.002)}))
    assert "not run here, nor on a device" in text
    rows = [line for line in text.splitlines() if line.startswith("| coreml-")]
    assert rows[0] == (
        "| coreml-int4 | 9 | input_ids 1x2..512, attention_mask 1x2..512 | 169 of 169 | 11.0% / 22.0% | "
        "0.0800 | 80.0% | 350 | untested |"
    )
    assert "**To ship in Core ML:** coreml-int8 (the closest to the trained model)" in text
    assert "`deploy-coreml/int8/`" in text
    assert coreml_table({}) == []
