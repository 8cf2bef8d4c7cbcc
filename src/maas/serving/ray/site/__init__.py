"""A folder to put on the ``PYTHONPATH`` of Ray's nodes: its ``sitecustomize`` runs first in
every Python process they start (see :mod:`maas.serving.ray.site.sitecustomize`)."""
