"""The Node.js client (clients/node/) for real: node runs it, against a real server.

Node tokenizes like :mod:`maas.tokenizer`, runs the ONNX variant itself with
onnxruntime-node (the same probabilities as Python's onnxruntime), and classifies over OIP
gRPC and REST with TLS and a key (the same answers as the model run in Node).
Skipped, with the reason, when ``node`` or the client's packages (``npm ci``) are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from serving_support import ROOT, free_port, make_certificates, running_server, write_repository

from maas.provenance import PROVENANCE_FILE, atomic_dir, build_provenance, file_hashes, write_json
from maas.serving.auth import hash_key
from maas.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
CLIENT = ROOT / "clients" / "node"
KEY = "node-test-key-0123456789"
TEXTS = [
    "The Shuttle reached ORBIT, at last!",
    "New brakes for my car... 4 wheels; ÉCOLE naïve café",
    "",
    "word " * 200,
    "古代战争实时策略游戏 0 A.D. ｶﾀｶﾅ Straße Москва cafe\u0301 ﬁne 𠀀𠀁",
]

if shutil.which("node") is None:
    pytest.skip("node is not on PATH: the Node.js client is not tested", allow_module_level=True)
if not (CLIENT / "node_modules").is_dir():
    pytest.skip(
        "clients/node/node_modules is missing: run `npm ci` in clients/node",
        allow_module_level=True,
    )


def node(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", *args], cwd=CLIENT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def onnx_artifact(small_project, tmp_path_factory):
    """The small classifier in ONNX, as an artifact folder the server can load."""
    from maas.compress.onnx_export import to_onnx
    from maas.export import load_keras_model

    classifier = small_project / "models" / "classifier"
    content = to_onnx(load_keras_model(classifier))
    target = tmp_path_factory.mktemp("onnx") / "artifact"
    with atomic_dir(target) as out:
        (out / "model.onnx").write_bytes(content)
        shutil.copy(classifier / "tokenizer.json", out / "tokenizer.json")
        extra = {"files": file_hashes(out)}
        write_json(out / PROVENANCE_FILE, build_provenance(stage="test", params={}, extra=extra))
    return target


def test_node_tokenizer_gives_the_python_ids(onnx_artifact):
    tokenizer = Tokenizer.load(onnx_artifact / "tokenizer.json")
    script = (
        "import { Tokenizer } from './tokenizer.mjs';"
        f"const t = Tokenizer.load({json.dumps(str(onnx_artifact / 'tokenizer.json'))});"
        f"console.log(JSON.stringify(Array.from(t.encode({json.dumps(TEXTS)}))));"
    )
    ids = json.loads(node("--input-type=module", "-e", script).stdout)
    expected = tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(np.array(ids).reshape(expected.shape), expected)
    assert (expected > 1).any()  # the texts hit known words, not only padding and [UNK]


def test_node_folds_and_cuts_random_unicode_as_python_does():
    from maas.unicode_text import folded_tokens

    rng = np.random.default_rng(7)
    # Code points from every plane in use, spaces and punctuation between them.
    pools = [range(0x20, 0x250), range(0x370, 0x3FF), range(0x400, 0x4FF), range(0x600, 0x6FF),
             range(0x900, 0x97F), range(0xE00, 0xE7F), range(0x3040, 0x30FF),
             range(0x4E00, 0x4F00), range(0xAC00, 0xAD00), range(0xFB00, 0xFB07),
             range(0xFF00, 0xFFEF), range(0x1D400, 0x1D4FF), range(0x20000, 0x20100)]  # fmt: skip
    texts = [
        "".join(chr(rng.choice(pools[rng.integers(len(pools))])) for _ in range(40))
        for _ in range(60)
    ]
    script = (
        "import { foldedTokens } from './tokenizer.mjs';"
        f"const texts = {json.dumps(texts)};"
        "console.log(JSON.stringify(texts.map((t) => foldedTokens(t))));"
    )
    assert json.loads(node("--input-type=module", "-e", script).stdout) == [
        folded_tokens(text) for text in texts
    ]


def test_the_node_tables_are_this_pythons(tmp_path):
    from maas.unicode_text import export_tables

    export_tables(str(tmp_path / "tables.json"))
    committed = json.loads((CLIENT / "unicode-tables.json").read_text(encoding="utf-8"))
    assert committed == json.loads((tmp_path / "tables.json").read_text(encoding="utf-8")), (
        "regenerate: python -m maas.unicode_text clients/node/unicode-tables.json"
    )


def test_node_runs_the_onnx_model_itself(onnx_artifact):
    from maas.runtime import load_runtime

    answer = json.loads(node("onnx.mjs", str(onnx_artifact), *TEXTS).stdout)
    expected = load_runtime(onnx_artifact).predict(TEXTS)
    np.testing.assert_allclose(np.array(answer["probabilities"]), expected, atol=1e-5)
    labels = Tokenizer.load(onnx_artifact / "tokenizer.json").labels
    assert answer["labels"] == [labels[i] for i in expected.argmax(axis=1)]


def test_node_classifies_over_grpc_and_rest_with_tls_and_a_key(onnx_artifact, tmp_path):
    certs = make_certificates(tmp_path / "tls")
    repository = write_repository(tmp_path / "repo", {"classifier": {3: onnx_artifact}})
    (tmp_path / "keys.txt").write_text(hash_key(KEY) + "\n")
    grpc_port = free_port()
    args = [
        "--model-repository", str(repository), "--poll-interval", "0",
        "--api-key-file", str(tmp_path / "keys.txt"), "--grpc-port", str(grpc_port),
        "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
    ]  # fmt: skip
    local = json.loads(node("onnx.mjs", str(onnx_artifact), *TEXTS).stdout)
    with running_server(args, tmp_path / "server.log", tls_ca=certs["ca"]) as server:
        target = f"localhost:{grpc_port}"
        over_grpc = node(
            "classify.mjs", "--grpc", target, "--ca", str(certs["ca"]), "--key", KEY, *TEXTS
        )
        over_rest = node(
            "classify.mjs", "--rest", server.url, "--key", KEY, *TEXTS,
            env={"NODE_EXTRA_CA_CERTS": str(certs["ca"])},
        )  # fmt: skip
        refused = node(
            "classify.mjs", "--grpc", target, "--ca", str(certs["ca"]), "--key", "wrong",
            TEXTS[0], check=False,
        )  # fmt: skip
    for run, protocol in ((over_grpc, "grpc"), (over_rest, "rest")):
        answer = json.loads(run.stdout)
        assert (answer["protocol"], answer["version"]) == (protocol, "3")
        np.testing.assert_allclose(answer["probabilities"], local["probabilities"], atol=1e-5)
        assert answer["labels"] == local["labels"]
    assert refused.returncode == 1
    assert "UNAUTHENTICATED: missing or invalid API key" in refused.stderr
