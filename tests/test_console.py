"""The console: TensorFlow's native start-up lines hidden unless verbose, progress lines shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from maas import progress, quiet

IMPORT_TF = "import maas, tensorflow as tf; print(int(tf.constant(1) + 1))"


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != quiet.VERBOSE_VARIABLE}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=300,
        env={**environ, **env},
        check=True,
    )


def native_lines(stderr: bytes) -> list[bytes]:
    return [line for line in stderr.splitlines() if quiet.NATIVE_NOISE.match(line)]


def test_importing_tensorflow_through_maas_prints_nothing_unless_verbose():
    quiet_run = python(IMPORT_TF)
    assert quiet_run.stdout.strip() == b"2"  # TensorFlow works after the silenced import
    assert quiet_run.stderr == b"", quiet_run.stderr.decode()
    loud = python(IMPORT_TF, MAAS_VERBOSE="1")
    assert native_lines(loud.stderr), "MAAS_VERBOSE=1 should show TensorFlow's start-up lines"


def test_an_import_error_inside_the_silenced_import_still_reaches_the_user():
    code = "import sys; sys.modules['tensorflow.python'] = None; import maas, tensorflow"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode != 0 and b"Error" in result.stderr


def test_the_filter_drops_native_lines_and_keeps_the_rest():
    code = (
        "import os; from maas import quiet; quiet.filter_native_logs();"
        "os.write(2, b'E0000 00:00:1796270068.985836   13427 util.cc:131] oneDNN DT_BOOL\\n');"
        "os.write(2, b'kept 1\\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n');"
        "os.write(2, b'fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\\n');"
        "os.write(2, b'kept 2\\nno newline')"
    )
    assert python(code).stderr == b"kept 1\nkept 2\nno newline"
    assert b"util.cc" in python(code, MAAS_VERBOSE="1").stderr


def test_step_logs_its_start_its_end_and_its_failure(caplog):
    caplog.set_level(logging.INFO, logger="maas")
    with progress.step("build x"):
        pass
    with pytest.raises(KeyError), progress.step("build y"):
        raise KeyError("y")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "build x ..." and messages[1].startswith("build x: done in ")
    assert messages[3].startswith("build y: failed after ")


def test_epoch_logger_logs_one_line_per_epoch(caplog):
    import tf_keras as keras

    caplog.set_level(logging.INFO, logger="maas")
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.zeros((8, 3)), np.zeros((8, 2))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[progress.epoch_logger("tiny", 2)])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiny:")]
    assert [line.split(" loss=")[0] for line in lines] == ["tiny: epoch 1/2", "tiny: epoch 2/2"]
