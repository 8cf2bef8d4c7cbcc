"""maas: Model as a Service, a reproducible research pipeline on labelled texts.

tensorflow-model-optimization does not work with Keras 3, so every part of maas uses
``tf_keras`` (Keras 2). TensorFlow decides which Keras it binds when it is first imported,
so the switch must be set before that, here, when the package is imported. For the same
reason TensorFlow's C++ start-up lines are hidden here (:mod:`maas.quiet`; ``MAAS_VERBOSE=1``
shows them).
"""

import os

from maas import quiet

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ log lines after start-up (CPU feature notes, retracing) drown useful logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if quiet.verbose() else "2")
quiet.install()

__version__ = "0.1.0"
