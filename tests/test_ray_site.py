"""The Ray nodes' sitecustomize (maas.serving.ray.site): Ray imports without building the IRI
grammar, and IRIs are still checked, by the real grammar, when one is first validated."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from serving_support import ROOT

from maas.serving.ray.cluster import SITE

CHECK = """
import sys
import jsonschema

assert "rfc3987_syntax" in sys.modules  # jsonschema took the stand-in
assert "rfc3987_syntax.syntax_helpers" not in sys.modules, "the grammar was built at import"
checker = jsonschema.FormatChecker()
assert "iri" in checker.checkers
assert checker.conforms("https://example.org/\\u00e4", "iri")
assert not checker.conforms("not an iri", "iri")
assert "rfc3987_syntax.syntax_helpers" in sys.modules  # built on first use
print("ok")
"""


@pytest.mark.skipif(
    importlib.util.find_spec("rfc3987_syntax") is None, reason="rfc3987-syntax not installed"
)
def test_a_node_process_defers_the_iri_grammar_until_an_iri_is_checked():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT / "src")])}
    run = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
