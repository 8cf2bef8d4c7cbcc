"""The model server on Ray Serve (``maas serve --engine ray``): replicas across nodes.

* :mod:`maas.serving.ray.engine`: the controller (connect, deploy, follow the repository).
* :mod:`maas.serving.ray.ingress`: the ingress deployment, the same FastAPI application as
  the single-process server over a data plane filled from the controller's routing table.
* :mod:`maas.serving.ray.deployments`: a model version's replica (runtime and batcher) and
  the ensemble that averages its members.
"""
