"""Helpers for the serving tests: a TFLite artifact, a throwaway CA, a real server process."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np

from maas.ports import free_port
from maas.provenance import PROVENANCE_FILE, atomic_dir, build_provenance, file_hashes, write_json

ROOT = Path(__file__).resolve().parents[1]


def make_tflite_artifact(
    classifier_dir: Path,
    target: Path,
    *,
    batch: int | None = 4,
    bias_shift_seed: int | None = None,
) -> Path:
    """Convert the small Keras classifier to a ``model.tflite`` artifact folder.

    ``batch`` fixes the batch dimension (the runtime pads to it); ``None`` leaves it dynamic.
    ``bias_shift_seed``: add seeded noise to the output layer's bias first, for a second
    model whose probabilities clearly differ (an ensemble's members, say).
    """
    import tensorflow as tf

    from maas.export import load_keras_model
    from maas.tokenizer import Tokenizer

    model = load_keras_model(classifier_dir)
    if bias_shift_seed is not None:
        output = model.layers[-1]
        kernel, bias = output.get_weights()
        noise = np.random.default_rng(bias_shift_seed).normal(0.0, 1.0, bias.shape)
        output.set_weights([kernel, bias + noise.astype(bias.dtype)])
    tokenizer = Tokenizer.load(classifier_dir / "tokenizer.json")
    spec = tf.TensorSpec([batch, tokenizer.sequence_length], tf.int32)
    function = tf.function(lambda ids: model(ids, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    flatbuffer = converter.convert()
    with atomic_dir(target) as out:
        (out / "model.tflite").write_bytes(flatbuffer)
        shutil.copy(classifier_dir / "tokenizer.json", out / "tokenizer.json")
        record = build_provenance(
            stage="test",
            params={"batch": batch, "bias_shift_seed": bias_shift_seed},
            extra={
                "files": file_hashes(out),
                "tokenizer_fingerprint": tokenizer.fingerprint(),
            },
        )
        write_json(out / PROVENANCE_FILE, record)
    return target


def faulty_artifact(artifact: Path, target: Path, faults: dict | None) -> Path:
    """A copy of ``artifact`` with ``faults.json`` (:mod:`maas.serving.faults`), its hash
    recorded in the provenance, so the server's integrity check passes and covers it. It
    misbehaves only where the server runs with ``MAAS_FAULT_INJECTION=1``."""
    import json

    from maas.provenance import read_json
    from maas.serving.faults import FAULTS_FILE

    with atomic_dir(target) as out:
        shutil.copytree(artifact, out, dirs_exist_ok=True)
        if faults is not None:
            (out / FAULTS_FILE).write_text(json.dumps(faults))
            record = read_json(out / PROVENANCE_FILE)
            record["files"] = file_hashes(out)
            write_json(out / PROVENANCE_FILE, record)
    return target


def corrupt(artifact: Path) -> None:
    """Flip bytes in the model file of an artifact folder (its hash no longer matches)."""
    model = artifact / "model.tflite"
    if not model.exists():
        model = next(p for p in (artifact / "saved_model").rglob("*.pb"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("maas test CA"))
        .issuer_name(name("maas test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem"}
    paths["key"] = directory / "server.key"
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class ServerProcess:
    """``maas serve`` in a subprocess on a free loopback port; its log in a file."""

    def __init__(self, args: Sequence[str], log_path: Path, *, tls_ca: Path | None = None):
        self.port = free_port()
        self.scheme = "https" if tls_ca else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.verify: str | bool = str(tls_ca) if tls_ca else True
        self.log_path = log_path
        command = [sys.executable, "-m", "maas.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), *args]
        self._log = log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.verify, timeout=30, **kwargs)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/v2/health/ready").status_code == 200:
                        return
                time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def running_server(
    args: Sequence[str], log_path: Path, *, tls_ca: Path | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(args, log_path, tls_ca=tls_ca)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_for(condition, timeout: float = 60, interval: float = 0.25) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


_TFLITE_CACHE: dict[Path, Path] = {}


def tflite_artifact(classifier_dir: Path, tmp_path_factory) -> Path:
    """The small classifier as a TFLite artifact, converted once per test session."""
    if classifier_dir not in _TFLITE_CACHE:
        target = tmp_path_factory.mktemp("tflite") / "artifact"
        _TFLITE_CACHE[classifier_dir] = make_tflite_artifact(classifier_dir, target)
    return _TFLITE_CACHE[classifier_dir]


def write_repository(
    root: Path, models: dict[str, dict[int, Path]], configs: dict[str, str] | None = None
) -> Path:
    """A repository folder: ``{model: {version: artifact}}`` copied, plus config.yaml texts."""
    for model, versions in models.items():
        for version, artifact in versions.items():
            shutil.copytree(artifact, root / model / str(version))
    for model, text in (configs or {}).items():
        (root / model / "config.yaml").write_text(text)
    return root
