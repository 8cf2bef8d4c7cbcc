"""The seed's naive server, kept as the benchmark's baseline: Flask and Keras ``model.predict``.

One request, one ``model.predict`` call on one text, in Flask's threaded development server:
no batching, Keras' per-call overhead on every request. Same request and response as the
seed API (``POST /predict`` with ``{"text": ...}``).

    .venv/bin/python benchmarks/naive_server.py --classifier models/classifier --port 8600
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import maas  # noqa: F401  (Keras 2 before TensorFlow)
from maas.export import load_keras_model
from maas.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def create_app(classifier: Path):
    from flask import Flask, jsonify, request

    model = load_keras_model(classifier)
    tokenizer = Tokenizer.load(classifier / "tokenizer.json")
    app = Flask("naive")

    @app.get("/health")
    def health():
        return jsonify(ok=True)

    @app.post("/predict")
    def predict():
        body = request.get_json(force=True)
        probabilities = model.predict(tokenizer.encode([body["text"]]), verbose=0)[0]
        label = tokenizer.labels[int(probabilities.argmax())]
        return jsonify(
            label=label,
            probabilities=dict(zip(tokenizer.labels, probabilities.tolist(), strict=True)),
        )

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "classifier")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8600)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    create_app(args.classifier).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
