"""The compress stage: notebook 04 really runs (papermill) on the small trained classifier.

One run builds every variant with small budgets; the tests then reload each artifact from
disk and compare it with the model it was made from, check the pruned weights layer by layer,
the int8 conversion, the sizes, the metrics and figures. Bad input must fail with a clear
message before anything is written, and a failure mid-way must leave ``models/compressed``
as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import merge, small_params_dict, write_project

from maas import config
from maas.compress import stage
from maas.compress.quantize import TFLiteModel
from maas.config import COMPRESSION_VARIANTS, ConfigError
from maas.export import load_keras_model
from maas.provenance import read_json, verify_files
from maas.runtime import load_runtime
from maas.splits import read_split

pytestmark = pytest.mark.slow

# Every variant, with the smallest budgets that still exercise each technique.
EVERY_VARIANT = {
    "compress": {
        "variants": list(COMPRESSION_VARIANTS),
        "prune": {
            "epochs": 2,
            "ramp_epochs": 1,
            "frequency": 1,
            "layers": ["embedding", "lstm", "dense"],
        },
        # A student smaller than the tiny teacher, as the full-size one is (embedding 24 vs 128).
        "distill": {"epochs": 3, "embedding_dim": 4},
    },
    "settings": {"compress": {"latency_examples": 5, "throughput_batches": 1, "warmup": 1}},
}


def copy_project(small_project: Path, target: Path, overrides: dict) -> Path:
    """A project with the small project's data and teacher, and its own parameters."""
    root = write_project(target, merge(small_params_dict(), overrides))
    for part in ("data/processed", "models/classifier"):
        shutil.copytree(small_project / part, root / part)
    return root


@pytest.fixture(scope="module")
def compressed(small_project, tmp_path_factory) -> Path:
    root = copy_project(small_project, tmp_path_factory.mktemp("compress"), EVERY_VARIANT)
    subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/04-compress.ipynb",
         "reports/notebooks/04-compress.ipynb", "--cwd", "notebooks",
         "-p", "params_file", "../params.yaml", "--no-progress-bar", "--log-level", "WARNING"],
        cwd=root, check=True, timeout=900,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def test_texts(compressed) -> list[str]:
    return read_split(compressed / "data" / "processed" / "test.jsonl").texts[:40]


def variant_dir(root: Path, name: str) -> Path:
    return root / "models" / "compressed" / name


def test_notebook_writes_every_variant_the_metrics_and_the_figures(compressed):
    built = sorted(p.name for p in (compressed / "models" / "compressed").iterdir())
    assert built == sorted(COMPRESSION_VARIANTS)
    metrics = json.loads((compressed / "reports" / "metrics" / "compress.json").read_text())
    assert set(metrics["variants"]) == {"teacher_saved_model", *COMPRESSION_VARIANTS}
    for row in metrics["variants"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["file_bytes"] > row["gzip_bytes"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["throughput_per_s"] > 0
    assert {"int8", "pruned_float32", "distilled", "fastest"} <= set(metrics["targets"])
    rows = json.loads((compressed / "reports" / "compress" / "variants.json").read_text())
    assert [row["variant"] for row in rows][:2] == ["teacher_keras", "teacher_saved_model"]
    for name in ("size", "latency"):
        assert (
            (compressed / "reports" / "figures" / f"compress_accuracy_vs_{name}.png")
            .stat()
            .st_size
        )
    notebook = json.loads((compressed / "reports" / "notebooks" / "04-compress.ipynb").read_text())
    errors = [
        o for c in notebook["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    assert errors == []


@pytest.mark.parametrize("name", COMPRESSION_VARIANTS)
def test_every_variant_is_a_verified_artifact_with_provenance(compressed, name):
    directory = variant_dir(compressed, name)
    assert verify_files(directory) == []
    record = read_json(directory / "provenance.json")
    assert record["stage"] == "compress" and record["variant"] == name
    tokenizer_file = compressed / "data" / "processed" / "tokenizer.json"
    assert (directory / "tokenizer.json").read_bytes() == tokenizer_file.read_bytes()
    assert record["metrics"]["accuracy"] >= 0 and "latency_p50_ms" in record["metrics"]
    assert not list(directory.parent.glob(".*tmp*"))  # no leftovers of the atomic writes


# Variant -> (the in-memory model it must reproduce once reloaded, tolerance). The sources
# are loaded from their own files (model.keras) or the teacher's; the reload goes through
# maas.runtime.load_runtime, from raw text, as a server would.
EXACT = 1e-5
RELOAD_AGAINST = {
    "float32": ("teacher", EXACT),
    "onnx": ("teacher", EXACT),
    "float16": ("teacher", 5e-3),
    "pruned": ("pruned", EXACT),
    "pruned_float32": ("pruned", EXACT),
    "distilled": ("distilled", EXACT),
    "distilled_float32": ("distilled", EXACT),
    "scratch": ("scratch", EXACT),
}


@pytest.mark.parametrize("name", sorted(RELOAD_AGAINST))
def test_reloaded_variant_matches_its_in_memory_model(compressed, test_texts, name):
    source, tolerance = RELOAD_AGAINST[name]
    source_dir = (
        compressed / "models" / "classifier"
        if source == "teacher"
        else variant_dir(compressed, source)
    )
    model = load_keras_model(source_dir)
    runtime = load_runtime(variant_dir(compressed, name))
    expected = model.predict(runtime.tokenizer.encode(test_texts), verbose=0)
    np.testing.assert_allclose(runtime.predict(test_texts), expected, atol=tolerance)


def test_a_lean_onnx_runtime_predicts_what_the_served_one_does(compressed, test_texts):
    served = load_runtime(variant_dir(compressed, "onnx"))
    lean = load_runtime(variant_dir(compressed, "onnx"), lean=True)
    assert (served.lean, lean.lean) == (False, True)
    expected = served.predict(test_texts)
    for _ in range(2):  # the second call runs on an arena the first handed back
        np.testing.assert_array_equal(lean.predict(test_texts), expected)


@pytest.mark.parametrize(
    "name", ["dynamic_int8", "int8", "qat_int8", "pruned_int8", "distilled_int8"]
)
def test_quantized_variants_reload_to_their_converted_bytes(compressed, test_texts, name):
    """int8 differs from float by design: the file must give what the converter made."""
    directory = variant_dir(compressed, name)
    runtime = load_runtime(directory)
    in_memory = TFLiteModel((directory / "model.tflite").read_bytes(), "int8")
    reloaded = runtime.predict(test_texts)
    np.testing.assert_allclose(
        reloaded, in_memory.predict_ids(runtime.tokenizer.encode(test_texts)), atol=1e-6
    )
    np.testing.assert_allclose(reloaded.sum(axis=1), 1.0, atol=0.05)
    recorded = read_json(compressed / "reports" / "compress" / "variants.json")
    row = next(r for r in recorded if r["variant"] == name)
    assert row["round_trip_max_abs_diff"] <= stage.ROUNDTRIP_TOLERANCE


def test_int8_is_full_integer_with_fused_lstms(compressed):
    conversion = read_json(variant_dir(compressed, "int8") / "provenance.json")["conversion"]
    assert conversion["integer_only"] is True
    assert (
        conversion["ops"]["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 2 and "WHILE" not in conversion["ops"]
    )
    assert conversion["tensor_types"]["int8"] > 0 and conversion["tensor_types"]["int16"] > 0


def test_pruned_weights_reach_the_target_sparsity_layer_by_layer(compressed):
    target = config.load_params(compressed / "params.yaml").compress.prune.target_sparsity
    model = load_keras_model(variant_dir(compressed, "pruned"))
    checked = []
    for weight in model.weights:
        zeros = float(np.mean(weight.numpy() == 0))
        if weight.name.split("/")[-1].split(":")[0] in (
            "embeddings",
            "kernel",
            "recurrent_kernel",
        ):
            assert zeros >= target - stage.SPARSITY_TOLERANCE, weight.name
            checked.append(weight.name)
        else:
            assert zeros < 0.5, f"{weight.name} (a bias) should not be pruned"
    assert len(checked) == 6  # embedding, 2 x (kernel, recurrent kernel), dense kernel
    recorded = read_json(variant_dir(compressed, "pruned") / "provenance.json")["sparsity"]
    assert sorted(recorded) == sorted(checked)


def test_sizes_shrink_where_the_technique_says(compressed):
    rows = {
        r["variant"]: r for r in read_json(compressed / "reports" / "compress" / "variants.json")
    }
    float32 = rows["float32"]
    assert rows["int8"]["file_bytes"] < float32["file_bytes"] / 2.5
    assert rows["float16"]["file_bytes"] < float32["file_bytes"] * 0.6
    assert rows["pruned_float32"]["file_bytes"] == pytest.approx(float32["file_bytes"], rel=0.05)
    assert rows["pruned_float32"]["gzip_bytes"] < float32["gzip_bytes"] / 2
    assert rows["pruned_int8"]["gzip_bytes"] < rows["int8"]["gzip_bytes"]
    assert rows["distilled"]["parameters"] == rows["scratch"]["parameters"]
    assert rows["distilled"]["parameters"] < rows["teacher_keras"]["parameters"]


def small_copy(small_project: Path, tmp_path: Path, **compress) -> Path:
    overrides = {
        "compress": compress,
        "settings": {"compress": {"latency_examples": 2, "throughput_batches": 1}},
    }
    return copy_project(small_project, tmp_path / "project", overrides)


def run_stage(root: Path, overrides: dict | None = None) -> dict:
    params = config.load_params(root / "params.yaml", overrides)
    paths = config.project_paths(root / "params.yaml")
    return stage.run(params.compress, paths, settings=params.settings.compress)


def test_missing_teacher_is_a_clear_error_and_writes_nothing(small_project, tmp_path):
    root = small_copy(small_project, tmp_path)
    shutil.rmtree(root / "models" / "classifier")
    with pytest.raises(FileNotFoundError, match="teacher not found.*run the train stage"):
        run_stage(root)
    assert not (root / "models" / "compressed").exists()


def test_missing_representative_dataset_is_a_clear_error(small_project, tmp_path):
    root = small_copy(small_project, tmp_path)
    (root / "data" / "processed" / "train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="representative dataset missing"):
        run_stage(root)
    assert not (root / "models" / "compressed").exists()


def test_bad_parameters_fail_before_any_work(small_project, tmp_path):
    root = small_copy(small_project, tmp_path)
    for override, message in [
        ({"compress.variants": ["float32", "int3"]}, "unknown variant 'int3'"),
        ({"compress.prune.target_sparsity": 1.0}, r"in \[0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_stage(root, override)
    assert not (root / "models" / "compressed").exists()


def test_a_failed_round_trip_leaves_the_previous_variants_untouched(
    small_project, tmp_path, monkeypatch
):
    root = small_copy(small_project, tmp_path, variants=["onnx"])
    previous = root / "models" / "compressed" / "older" / "marker"
    previous.parent.mkdir(parents=True)
    previous.write_text("from an earlier run")
    # A reference that disagrees with the file: the reloaded model must be refused.
    original = stage.VariantBuilder.build

    def corrupted(self, name):
        variant = original(self, name)
        variant.reference = lambda ids: np.zeros((len(ids), 3), np.float32)
        return variant

    monkeypatch.setattr(stage.VariantBuilder, "build", corrupted)
    with pytest.raises(stage.RoundTripError, match="onnx: reloaded outputs differ"):
        run_stage(root)
    assert previous.read_text() == "from an earlier run"
    assert sorted(p.name for p in (root / "models").iterdir()) == ["classifier", "compressed"]
    assert sorted(p.name for p in (root / "models" / "compressed").iterdir()) == ["older"]


def test_compress_params_in_params_yaml_are_complete():
    from conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())["compress"]
    assert sorted(params["variants"]) == sorted(COMPRESSION_VARIANTS)
    assert params["prune"]["target_sparsity"] == 0.8
