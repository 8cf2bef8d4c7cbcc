"""gRPC front of the model server: the Open Inference Protocol (KServe v2) and TensorFlow
Serving's PredictionService and ModelService, over the same data plane as REST.

Modules: :mod:`.server` (start, health, reflection, drain), :mod:`.calls` (keys, errors,
metrics, access log), :mod:`.oip` and :mod:`.tfserving` (the two protocols). The stubs of
``grpc_predict_v2.proto`` beside them are generated (``make protos``); TensorFlow Serving's
come from the ``tensorflow-serving-api`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GrpcSettings:
    """Where and how the gRPC server listens (``maas serve --grpc-port``)."""

    port: int
    host: str = "127.0.0.1"
    tls_cert: Path | None = None  # both or neither: the HTTP server's certificate and key
    tls_key: Path | None = None
    grace_s: float = 30.0  # at shutdown, how long calls in flight may take

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"gRPC port must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("gRPC over TLS needs both the certificate and its key")
