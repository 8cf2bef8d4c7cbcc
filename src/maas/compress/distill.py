"""Knowledge distillation: a small, fast student learns from the trained classifier.

The student (``compress.distill.student``) is one of :data:`STUDENTS`:

- ``bag_of_embeddings``: the mean of the post's word embeddings (padding excluded), then a
  linear layer, as fastText does. No recurrence: one gather, one sum, one matrix product.
- ``cnn``: embeddings, one convolution (width 5, ReLU), max over time, a linear layer.
- ``wide``: the wide model's unit-length TF-IDF-weighted bag of words (sublinear TF, IDF of
  the training split; :func:`maas.model.wide.tfidf_bag`) with narrow embeddings, then a
  linear layer: the wide teacher's shape, a fraction of its width.

It learns from the teacher's *softened* outputs, ``softmax(log p / T)`` for a temperature
``T`` (the same as dividing the teacher's logits by ``T``), against its own logits divided by
``T``, weighted ``1 - alpha``, together with the true labels, weighted ``alpha`` (Hinton et
al., 2015; the soft term is scaled by ``T**2`` so its gradients keep their size). The
control is the same student, trained the same way for the same budget with ``alpha = 1``:
the true labels only. Both stop early on validation accuracy, keeping their best epoch.

The teacher's outputs on the training split are computed once, before training: the teacher
is fixed and runs without dropout, so they never change.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.batches import shuffled_batches
from maas.model import INPUT_NAME
from maas.progress import epoch_logger

STUDENTS = ("bag_of_embeddings", "cnn", "wide")
LOGITS_LAYER = "logits"
CONV_WIDTH = 5


def build_student(
    *,
    architecture: str,
    vocabulary_size: int,
    sequence_length: int,
    n_classes: int,
    embedding_dim: int,
    filters: int,
    train_ids: np.ndarray | None = None,
) -> keras.Model:
    """A student: token ids -> probabilities, with a ``logits`` layer before the softmax.

    Only built-in layers and TensorFlow ops (saved as ``TFOpLambda``), so ``model.keras``
    loads without custom objects. ``train_ids``: the training split's ids (the ``wide``
    student's IDF). Raises ``ValueError`` for an unknown architecture.
    """
    if architecture not in STUDENTS:
        raise ValueError(f"unknown student {architecture!r} (expected one of {STUDENTS})")
    token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name=INPUT_NAME)
    if architecture == "wide":
        from maas.model.wide import inverse_document_frequencies, tfidf_bag

        idf = None
        if train_ids is not None:
            idf = inverse_document_frequencies(
                train_ids, vocabulary_size=vocabulary_size, bigram_buckets=0
            )
        features = tfidf_bag(
            token_ids,
            vocabulary_size=vocabulary_size,
            bigram_buckets=0,
            embedding_dim=embedding_dim,
            sublinear_tf=True,
            idf=idf,
        )
        logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER)(features)
        probabilities = keras.layers.Softmax(name="probabilities")(logits)
        return keras.Model(token_ids, probabilities, name=f"student_{architecture}")
    embedded = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")(token_ids)
    if architecture == "bag_of_embeddings":
        # A masked mean written with plain ops: Keras' masked average pooling divides 0 by 0
        # on an empty post (the test split keeps those) and returns NaN.
        real = tf.cast(tf.not_equal(token_ids, 0), embedded.dtype)[:, :, None]
        total = tf.reduce_sum(embedded * real, axis=1)
        features = total / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
    else:
        convolved = keras.layers.Conv1D(filters, CONV_WIDTH, activation="relu", name="conv")(
            embedded
        )
        features = keras.layers.GlobalMaxPooling1D(name="max_over_time")(convolved)
    logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER)(features)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(token_ids, probabilities, name=f"student_{architecture}")


def soften(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """``softmax(log p / T)``: the distribution a temperature ``T`` gives to logits of ``p``."""
    return tf.nn.softmax(tf.math.log(tf.maximum(probabilities, 1e-12)) / temperature, axis=-1)


class Distiller(keras.Model):
    """Trains a student's logits on ``alpha * CE + (1 - alpha) * T**2 * KL(teacher || student)``.

    Training batches are ``(token_ids, (labels, teacher_probabilities))``; validation batches
    are ``(token_ids, labels)``.
    """

    def __init__(self, student: keras.Model, *, temperature: float, alpha: float) -> None:
        super().__init__(name="distiller")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.student = student
        self.logits = keras.Model(student.input, student.get_layer(LOGITS_LAYER).output)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.accuracy]

    def call(self, token_ids, training=False):
        return self.logits(token_ids, training=training)

    def _loss(self, labels, teacher, logits) -> tf.Tensor:
        hard = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        if self.alpha == 1.0:  # the scratch control: the teacher plays no part
            return tf.reduce_mean(hard)
        soft = keras.losses.kl_divergence(
            soften(teacher, self.temperature), tf.nn.softmax(logits / self.temperature)
        )
        mixed = self.alpha * hard + (1.0 - self.alpha) * self.temperature**2 * soft
        return tf.reduce_mean(mixed)

    def train_step(self, data):
        token_ids, (labels, teacher) = data
        with tf.GradientTape() as tape:
            logits = self(token_ids, training=True)
            loss = self._loss(labels, teacher, logits)
        variables = self.logits.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        token_ids, labels = data
        logits = self(token_ids, training=False)
        hard = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        self.loss_tracker.update_state(tf.reduce_mean(hard))
        self.accuracy.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}


def train_student(
    student: keras.Model,
    *,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    teacher_probabilities: np.ndarray | None,
    temperature: float,
    alpha: float,
    epochs: int,
    learning_rate: float,
    patience: int,
    batch_size: int,
    seed: int,
) -> dict[str, list[float]]:
    """Train ``student`` in place: distilled, or from scratch when no teacher outputs are given.

    Returns the training history (loss and accuracy per epoch, validation included).
    """
    ids, labels = train
    label = "scratch" if teacher_probabilities is None else "distilled"
    if teacher_probabilities is None:
        alpha = 1.0
        teacher_probabilities = np.zeros((len(ids), student.output_shape[-1]), np.float32)
    elif len(teacher_probabilities) != len(ids):
        raise ValueError("teacher_probabilities must have one row per training post")
    keras.utils.set_random_seed(seed)
    distiller = Distiller(student, temperature=temperature, alpha=alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate))
    train_ds = shuffled_batches(
        ids,
        (labels, np.asarray(teacher_probabilities, np.float32)),
        batch_size=batch_size,
        seed=seed,
    )
    val_ds = tf.data.Dataset.from_tensor_slices(validation).batch(batch_size)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
    )
    history = distiller.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=[stopper, epoch_logger(label, epochs)],
        verbose=0,
    ).history
    return {k: [float(v) for v in values] for k, values in history.items()}
