"""The maas model server: a versioned model repository behind three HTTP protocols and gRPC.

* :mod:`maas.serving.repository` scans a TensorFlow Serving style repository
  (``DIR/<model>/<version>/``), loads, verifies and warms versions, and hot-reloads it.
* :mod:`maas.serving.protocol_v1` speaks TensorFlow Serving's REST API, and
  :mod:`maas.serving.protocol_v2` the Open Inference Protocol (KServe v2);
  :mod:`maas.serving.seed_api` keeps the seed's ``POST /predict``; :mod:`maas.serving.grpc`
  serves both protocols over gRPC too, a thin front over the same repository and batchers;
  :mod:`maas.serving.protocol_repository` lists the repository and re-reads it (admin).
* :mod:`maas.serving.batching` coalesces concurrent requests into batches;
  :mod:`maas.serving.auth` (keys scoped per model, admin), :mod:`maas.serving.ratelimit`
  (a rate per key), :mod:`maas.serving.limits` and :mod:`maas.serving.metrics` make it safe
  to expose and observable; :mod:`maas.serving.app` puts it together.

Serving only loads exported artifacts (through :func:`maas.runtime.load_runtime`): it never
imports training code and never reads ``params.yaml``.
"""
