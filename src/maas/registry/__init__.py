"""The model registry: versions and stages of DVC artifacts, and what serves them.

Read one way down: :mod:`~maas.registry.cli` (``maas models``) ->
:mod:`~maas.registry.operations` (promote and roll back: the registry and the serving
repository move together) -> :mod:`~maas.registry.materialize` (a version's exact bytes,
verified) -> :mod:`~maas.registry.tags` (versions and stages as GTO git tags) ->
:mod:`~maas.registry.store` (git, ``dvc.yaml``, ``dvc.lock``, the DVC cache and remote).
Nothing is imported here, so ``maas --help`` loads neither GTO nor DVC.
"""
