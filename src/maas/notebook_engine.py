"""The papermill engine of the pipeline's stages: nbclient's, over an encrypted kernel link.

papermill's default engine starts the kernel over plain TCP, and ipykernel prints a warning
about it in every stage. jupyter_client can hand the kernel CurveZMQ keys
(``transport_encryption="auto"``: when the kernel spec declares ``curve``, as ipykernel's
does), but papermill's command line cannot set that, so the stages run with
``--engine maas``, this engine (registered in ``pyproject.toml`` under papermill's
``papermill.engine`` entry points). A kernel spec without Curve support starts as before.
The kernel also gets fewer malloc arenas (less memory, see :meth:`MaasEngine`).
"""

from __future__ import annotations

import os

from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine
from traitlets import default


class EncryptedKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, provisioning Curve keys where the kernel supports them."""

    @default("transport_encryption")
    def _encrypt_when_supported(self) -> str:
        return "auto"


class MaasEngine(NBClientEngine):
    """papermill's nbclient engine with :class:`EncryptedKernelManager`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        kwargs.setdefault("kernel_manager_class", EncryptedKernelManager)
        # glibc spreads threads over up to 8 malloc arenas per core, and TensorFlow's threads
        # leave them fragmented: two arenas cut a wide model's training peak from 2.0 to
        # 1.7 GB (3 epochs on 20 Newsgroups). The kernel inherits it (set before it starts).
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
