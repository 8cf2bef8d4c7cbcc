"""maas: Model as a Service, a reproducible research pipeline on 20 Newsgroups.

tensorflow-model-optimization does not work with Keras 3, so every part of maas uses
``tf_keras`` (Keras 2). TensorFlow decides which Keras it binds when it is first imported,
so the switch must be set before that, here, when the package is imported.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) drowns useful logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
