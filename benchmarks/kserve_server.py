"""KServe's ModelServer on a maas SavedModel, for ``benchmarks/tail.py`` (a peer's tail).

Runs with a throwaway virtual environment's Python that has ``kserve`` installed (never the
project's); TensorFlow comes from the project's environment (``--site-packages``, appended
to ``sys.path``). Serves ``POST /v1/models/NAME:predict`` with ``{"instances": [text]}``:
the SavedModel's ``serving_default`` signature on the raw texts, its probabilities back.

    /tmp/kserve-venv/bin/python benchmarks/kserve_server.py --model-dir DIR/saved_model \\
        --site-packages .venv/lib/python3.11/site-packages --http_port 8080
"""

from __future__ import annotations

import argparse
import sys

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--model-dir", required=True)
parser.add_argument("--site-packages", required=True)
parser.add_argument("--model-name", default="classifier")
ours, rest = parser.parse_known_args()
sys.argv = [sys.argv[0], *rest, "--enable_grpc", "false"]  # kserve reads its own flags at import
sys.path.append(ours.site_packages)

import kserve  # noqa: E402


class SavedModelClassifier(kserve.Model):
    """The SavedModel's serving signature, one request at a time (KServe's default)."""

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(name)
        self.directory = directory
        self.load()

    def load(self) -> bool:
        import tensorflow as tf

        self.tf = tf
        self.signature = tf.saved_model.load(self.directory).signatures["serving_default"]
        self.signature(texts=tf.constant(["warm-up"]))
        self.ready = True
        return True

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        out = self.signature(texts=self.tf.constant(payload["instances"]))
        return {"predictions": out["probabilities"].numpy().tolist()}


if __name__ == "__main__":
    model = SavedModelClassifier(ours.model_name, ours.model_dir)
    kserve.ModelServer().start([model])
