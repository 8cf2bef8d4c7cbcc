"""Training, read one way down: :mod:`~maas.training.stage` (the train stage's entry point)
-> :mod:`~maas.training.job` (one process per task: local jobs, cluster tasks) ->
:mod:`~maas.training.worker` (one training process: read, fit, export) ->
:mod:`~maas.training.fit` (the model under a ``tf.distribute`` strategy, ``model.fit``).

Beside them: :mod:`~maas.training.callbacks` (progress, curves, throughput, backups),
:mod:`~maas.training.distributed` (strategies, ``TF_CONFIG``, sharding),
:mod:`~maas.training.launcher` (local processes) and :mod:`~maas.training.cli`
(``maas train``); :mod:`~maas.training.ensemble` (members in turn, then one model, between
worker and fit); and the Ray engine, :mod:`~maas.training.ray_job` (the driver, beside
``job``) and :mod:`~maas.training.ray_tasks` (what runs on the nodes). Nothing is imported
here, so a task process loads only what it runs.
"""
