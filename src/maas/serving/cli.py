"""Serve a model repository over HTTP(S): TensorFlow Serving REST (v1), the Open Inference
Protocol (v2) and the seed's POST /predict, with dynamic batching, API keys, TLS and
Prometheus metrics. The repository has TensorFlow Serving's layout, DIR/<model>/<version>/,
and is reloaded while the server runs.

Examples:
  maas serve --model-repository models/repository --port 8501
  maas serve --model-repository models/repository --port 8501 --grpc-port 8500
  maas serve --model-repository models/repository --api-key-file keys.txt \\
      --tls-cert server.pem --tls-key server.key
  echo -n "$KEY" | maas serve --hash-api-key >> keys.txt
  maas serve --model-repository models/repository --engine ray --max-replicas 4
  maas serve --model-repository models/repository --engine ray --address HEAD:6379
  maas serve --model-repository models/repository --payload-log logs/traffic \\
      --payload-sample 0.1
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
from pathlib import Path

from maas.serving.auth import hash_key, keys_from_env, read_key_file
from maas.serving.layout import Scaling
from maas.serving.limits import DEFAULT_LIMITS, Limits
from maas.serving.payload_log import PayloadLogSettings, check_writable
from maas.serving.redact import parse_kinds
from maas.serving.tap import TrafficSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="repository folder: DIR/<model>/<version>/ artifact folders",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for all)",
    )
    parser.add_argument("--port", type=int, default=8501, help="port (default: %(default)s)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help="also serve gRPC on this port (OIP v2, TF Serving PredictionService and "
        "ModelService, health, reflection), same host, keys, TLS and limits",
    )
    versions = parser.add_argument_group("versions")
    versions.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often to look for new, removed or relabelled versions "
        "(default: %(default)s; 0: never)",
    )
    versions.add_argument(
        "--version-policy",
        choices=("latest", "all"),
        default="latest",
        help="for models without a config.yaml (default: %(default)s)",
    )
    versions.add_argument(
        "--default-model",
        metavar="NAME",
        help="model of POST /predict when a request names none (default: the only model)",
    )
    batching = parser.add_argument_group("dynamic batching")
    batching.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="texts per model call at most (default: %(default)s)",
    )
    batching.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="longest wait for a batch to fill (default: %(default)s)",
    )
    batching.add_argument(
        "--no-batching", action="store_true", help="run every request on its own"
    )
    batching.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="requests waiting for one model at most; more are refused at once with 503 and "
        "Retry-After (gRPC: RESOURCE_EXHAUSTED), counted in maas_requests_shed_total "
        "(default: unbounded; a model's config.yaml `max_queue:` overrides)",
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="hashed API keys, one 'sha256:<hex>' a line, optionally with scopes: "
        "name=ID models=A,B rate=50/s burst=100 scopes=admin (see the how-to on operating "
        "the server), re-read when it changes; requests then need "
        "'Authorization: Bearer KEY' or 'x-api-key: KEY'",
    )
    security.add_argument(
        "--api-keys-env",
        metavar="VAR",
        help="also accept the comma-separated keys in this environment variable "
        "(every model, no rate limit, not admin)",
    )
    security.add_argument(
        "--hash-api-key",
        action="store_true",
        help="print the key-file line for the key on standard input, and exit",
    )
    security.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (chain)"
    )
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's key")
    security.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_LIMITS.max_body_bytes,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    security.add_argument(
        "--max-texts",
        type=int,
        default=DEFAULT_LIMITS.max_texts,
        help="texts per request at most (default: %(default)s)",
    )
    security.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_LIMITS.max_text_chars,
        help="characters per text at most (default: %(default)s)",
    )
    add_traffic_arguments(parser)
    add_ray_arguments(parser)
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="at shutdown, how long in-flight requests may take (default: %(default)s)",
    )


def add_traffic_arguments(parser: argparse.ArgumentParser) -> None:
    traffic = parser.add_argument_group(
        "traffic log and drift (see docs/how-to/traffic-and-drift.md)"
    )
    traffic.add_argument(
        "--payload-log",
        type=Path,
        metavar="DIR",
        help="write sampled requests and their answers as JSON Lines under DIR, redacted, "
        "off the request path (created if missing; must be writable; with --engine ray, "
        "storage every node shares)",
    )
    traffic.add_argument(
        "--payload-sample",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="share of requests logged (default: %(default)s)",
    )
    traffic.add_argument(
        "--payload-redact",
        default="default",
        metavar="KINDS",
        help="what is masked before anything is written: 'default' (all of url, email, ip, "
        "phone, number), 'none', or a comma-separated list of those kinds",
    )
    traffic.add_argument(
        "--payload-file-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="start a new log file past this size (default: %(default)s)",
    )
    traffic.add_argument(
        "--payload-files",
        type=int,
        default=10,
        metavar="N",
        help="log files kept per server process, the oldest deleted (default: %(default)s)",
    )
    traffic.add_argument(
        "--payload-probabilities",
        action="store_true",
        help="log every class's probability, not only the predicted class's",
    )
    defaults = TrafficSettings()
    traffic.add_argument(
        "--drift-window",
        type=int,
        default=defaults.drift_window,
        metavar="N",
        help="texts per model version compared with its training statistics "
        "(reference.json in the artifact; default: %(default)s; 0: no drift)",
    )
    traffic.add_argument(
        "--drift-threshold",
        type=float,
        default=defaults.drift_threshold,
        metavar="SHARE",
        help="a version drifts when, in some feature, more than this share of the window's "
        "texts would have to change to look like the training data (total variation "
        "distance; default: %(default)s)",
    )
    traffic.add_argument(
        "--drift-rate",
        type=float,
        default=defaults.drift_rate,
        metavar="TEXTS",
        help="texts measured per second at most, per server process (default: %(default)s)",
    )


def traffic_settings(args: argparse.Namespace) -> TrafficSettings:
    """The payload log's and drift's settings; ``ValueError`` for a bad value or a payload
    folder that cannot be written."""
    payload = None
    if args.payload_log is not None:
        check_writable(args.payload_log)
        payload = PayloadLogSettings(
            directory=args.payload_log.resolve(),
            sample=args.payload_sample,
            redact=parse_kinds(args.payload_redact),
            max_file_bytes=int(args.payload_file_mb * 1024**2),
            max_files=args.payload_files,
            probabilities=args.payload_probabilities,
        )
    return TrafficSettings(
        payload=payload,
        drift_window=args.drift_window,
        drift_threshold=args.drift_threshold,
        drift_rate=args.drift_rate,
    )


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("Ray Serve engine (--engine ray)")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: one process (default); ray: replicas on a Ray cluster",
    )
    ray.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="an existing Ray cluster (default: $RAY_ADDRESS, else start a local Ray)",
    )
    ray.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    ray.add_argument("--object-store-mb", type=int, default=256, help="a local Ray's object store")
    ray.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs per model replica (default: 1)"
    )
    ray.add_argument(
        "--max-replicas-per-node",
        type=int,
        metavar="N",
        help="at most N replicas of a version per node (1: spread over the nodes)",
    )
    defaults = Scaling()
    ray.add_argument(
        "--min-replicas",
        type=int,
        default=defaults.min_replicas,
        help="replicas per version at least (a model's config.yaml `scaling:` overrides)",
    )
    ray.add_argument(
        "--max-replicas", type=int, default=defaults.max_replicas, help="replicas at most"
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=defaults.target_ongoing_requests,
        help="requests in flight per replica the autoscaler aims at",
    )
    ray.add_argument("--upscale-delay", type=float, default=defaults.upscale_delay_s)
    ray.add_argument("--downscale-delay", type=float, default=defaults.downscale_delay_s)
    ray.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="NAME=MODEL,MODEL",
        help="serve NAME: the members' probabilities averaged, called in parallel",
    )


def ray_options(args: argparse.Namespace):  # -> RayOptions (imported lazily: Ray)
    from maas.serving.ray.engine import RayOptions

    ensembles = {}
    for spec in args.ensemble:
        name, _, members = spec.partition("=")
        if not name or not members:
            raise ValueError(f"--ensemble {spec!r}: expected NAME=MODEL,MODEL")
        ensembles[name] = tuple(m for m in members.split(",") if m)
    return RayOptions(
        address=args.address,
        num_cpus=args.num_cpus,
        object_store_bytes=args.object_store_mb * 1024**2,
        replica_cpus=args.replica_cpus,
        max_replicas_per_node=args.max_replicas_per_node,
        scaling=Scaling(
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            upscale_delay_s=args.upscale_delay,
            downscale_delay_s=args.downscale_delay,
        ),
        ensembles=ensembles,
    )


def run(args: argparse.Namespace) -> int:
    if args.hash_api_key:
        print(hash_key(sys.stdin.read().strip()))
        return 0
    if args.model_repository is None:
        log.error("--model-repository is required")
        return 2
    if not args.model_repository.is_dir():
        log.error("model repository not found: %s", args.model_repository)
        return 2
    try:
        config = build_config(args)
        ssl_files = check_tls(args.tls_cert, args.tls_key)
        options = ray_options(args) if args.engine == "ray" else None
    except (OSError, ValueError, ssl.SSLError) as error:
        log.error("%s", error)
        return 2
    if options is not None:
        from maas.serving.ray import engine

        return engine.serve(config, options, host=args.host, port=args.port, ssl_files=ssl_files)
    import uvicorn

    from maas.serving.app import create_app

    app = create_app(config)
    scheme = "https" if ssl_files else "http"
    log.info("serving %s on %s://%s:%d", args.model_repository, scheme, args.host, args.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ssl_certfile=ssl_files[0] if ssl_files else None,
            ssl_keyfile=ssl_files[1] if ssl_files else None,
            access_log=False,  # maas.access logs one structured line per request instead
            log_config=None,  # keep the logging set up by `maas`
            timeout_graceful_shutdown=args.graceful_timeout,
        )
    )
    server.run()
    return 0


def build_config(args: argparse.Namespace):  # -> ServerConfig (imported lazily: FastAPI)
    from maas.serving.app import ServerConfig

    grants = []  # read now, so that a malformed file stops the server before it starts
    if args.api_key_file is not None:
        grants += read_key_file(args.api_key_file)
        if not grants:
            raise ValueError(f"{args.api_key_file}: no key hashes in the file")
    env_hashes = []  # every model, no limit; a key also in the file gets the file's scopes
    if args.api_keys_env:
        if not os.environ.get(args.api_keys_env):
            raise ValueError(f"environment variable {args.api_keys_env} is empty or unset")
        env_hashes = [grant.digest for grant in keys_from_env(args.api_keys_env)]
    return ServerConfig(
        model_repository=args.model_repository,
        poll_interval_s=args.poll_interval,
        default_policy=args.version_policy,
        default_model=args.default_model,
        batching=not args.no_batching,
        load_in_background=True,  # liveness answers at once; readiness once models load
        max_batch_size=args.max_batch_size,
        batch_timeout_s=args.batch_timeout_ms / 1000,
        api_keys=tuple(grants),
        api_key_file=args.api_key_file.resolve() if args.api_key_file else None,
        api_key_hashes=tuple(env_hashes),
        max_queue=args.max_queue,
        grpc=grpc_settings(args),
        traffic=traffic_settings(args),
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            max_texts=args.max_texts,
            max_text_chars=args.max_text_chars,
        ),
    )


def grpc_settings(args: argparse.Namespace):  # -> GrpcSettings | None
    if args.grpc_port is None:
        return None
    from maas.serving.grpc import GrpcSettings

    if args.grpc_port == args.port:
        raise ValueError(f"--grpc-port {args.grpc_port} is also the HTTP --port")
    try:  # a clear error now, not a failed start-up later
        family, kind, _, _, address = socket.getaddrinfo(
            args.host, args.grpc_port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
    except OSError as error:
        raise ValueError(f"--grpc-port {args.grpc_port}: cannot listen: {error}") from error
    return GrpcSettings(
        port=args.grpc_port,
        host=args.host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        grace_s=args.graceful_timeout,
    )


def check_tls(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """The TLS files, checked to load as a pair; None without TLS."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))  # clear error if mismatched
    return str(cert), str(key)
