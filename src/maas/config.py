"""Typed, frozen configuration read from ``params.yaml``: the one home of every parameter.

``params.yaml`` has one section per pipeline stage, of parameters that change results (the
stages declare them as DVC ``params``), and a ``settings`` section of run settings that do
not: time-outs and how much to measure (:class:`Settings`), so that changing one re-runs
nothing. :func:`load_params` reads both into the frozen dataclasses below and rejects
unknown, missing or ill-typed keys with a message that names the key
(``train.batch_size: expected an integer, got 'big'``). Defaults live in ``params.yaml``
only: the dataclasses have no default values on purpose.

Paths are not parameters: :class:`Paths` derives every file location from the project root
(the folder that holds ``params.yaml``), so notebooks run the same from ``notebooks/`` in
JupyterLab and from the repository root under ``dvc repro``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from maas.tokenizer import TOKENIZER_FILE

NEWSGROUPS = "20newsgroups"  # data.source of scikit-learn's corpus (maas.sources)
NEWSGROUPS_REMOVABLE = ("headers", "footers", "quotes")
RAW_DATA_DIR = "data/raw"  # a corpus file's home, versioned by `dvc add`
STRATEGIES = ("one_device", "mirrored", "multi_worker", "parameter_server")
ENGINES = ("local", "ray")
RAY_STRATEGIES = ("one_device", "multi_worker")  # what the Ray engine runs
# Compression variants (docs/how-to/compression.md), each a folder models/compressed/<name>.
# Teacher TFLite forms: float32 reference, dynamic-range int8, float16, full-integer int8,
# quantization-aware int8; the pruned model (Keras) and its TFLite float32 and int8 forms; the
# distilled student (Keras) and its TFLite forms; the same student trained from scratch (the
# control); the teacher in ONNX.
COMPRESSION_VARIANTS = (
    "float32",
    "dynamic_int8",
    "float16",
    "int8",
    "qat_int8",
    "pruned",
    "pruned_float32",
    "pruned_int8",
    "distilled",
    "distilled_float32",
    "distilled_int8",
    "scratch",
    "onnx",
)
PRUNABLE_LAYERS = ("embedding", "lstm", "dense")


class ConfigError(ValueError):
    """A parameter file or an override that does not fit the schema."""


@dataclass(frozen=True)
class DataParams:
    source: str  # "20newsgroups", or a file or class folder under data/raw/ (sources.py)
    text_column: str  # a table file's columns
    label_column: str
    split_column: str  # optional in the file: train / validation / test per row
    test_fraction: float  # held out for the test split where the source does not decide it
    encoding_errors: Literal["strict", "replace"]  # bytes that are not UTF-8
    categories: tuple[str, ...] | None  # 20newsgroups only; None: all 20 newsgroups
    remove: tuple[str, ...]  # 20newsgroups only: parts of each post to strip
    validation_fraction: float  # share of the training posts held out for validation
    seed: int
    vocabulary_size: int  # including the padding and out-of-vocabulary entries
    sequence_length: int  # tokens kept per post (the first ones), padded with zeros
    max_documents_per_class: int | None  # None: every post; small numbers for quick runs

    def __post_init__(self) -> None:
        _check(0.0 < self.validation_fraction < 0.5, "data.validation_fraction", "in (0, 0.5)")
        _check(0.0 < self.test_fraction <= 0.5, "data.test_fraction", "in (0, 0.5]")
        _check(self.vocabulary_size >= 3, "data.vocabulary_size", ">= 3")
        _check(self.sequence_length >= 1, "data.sequence_length", ">= 1")
        for part in self.remove:
            _check(part in NEWSGROUPS_REMOVABLE, "data.remove", f"items in {NEWSGROUPS_REMOVABLE}")
        if self.max_documents_per_class is not None:
            _check(self.max_documents_per_class >= 2, "data.max_documents_per_class", ">= 2")
        if self.categories is not None:
            _check(len(self.categories) >= 2, "data.categories", "at least two names or null")
        for key in ("text_column", "label_column", "split_column"):
            _check(bool(getattr(self, key)), f"data.{key}", "a column name")
        if self.source == NEWSGROUPS:
            return
        raw = Path(RAW_DATA_DIR)
        source = Path(self.source)
        _check(
            not source.is_absolute() and ".." not in source.parts and raw in source.parents,
            "data.source",
            f"{NEWSGROUPS!r} or a path under {RAW_DATA_DIR}/ relative to the project (a "
            f"file or a class folder that `dvc add` versions), got {self.source!r}",
        )
        # The newsgroup options mean nothing for another corpus: say so rather than ignore.
        for key, unset in (("categories", "null"), ("remove", "[]")):
            _check(
                not getattr(self, key),
                f"data.{key}",
                f"{unset} for data.source {self.source!r} (it applies to {NEWSGROUPS} only)",
            )


@dataclass(frozen=True)
class DistributeParams:
    # local: this machine (one process, or one per task); ray: the tasks of a Ray cluster.
    engine: Literal["local", "ray"]
    strategy: Literal["one_device", "mirrored", "multi_worker", "parameter_server"]
    replicas: int  # mirrored: devices (logical CPU devices when there is no GPU)
    workers: int  # multi_worker and parameter_server: worker processes
    parameter_servers: int  # parameter_server: ps tasks that hold the embedding shards

    def __post_init__(self) -> None:
        _check(self.replicas >= 1, "train.distribute.replicas", ">= 1")
        _check(self.workers >= 1, "train.distribute.workers", ">= 1")
        _check(self.parameter_servers >= 1, "train.distribute.parameter_servers", ">= 1")
        _check(
            self.engine != "ray" or self.strategy in RAY_STRATEGIES,
            "train.distribute.strategy",
            f"one of {list(RAY_STRATEGIES)} with engine ray (an ensemble's members train in "
            f"parallel under one_device; multi_worker runs through Ray Train), got "
            f"{self.strategy!r}: {self.strategy} runs with engine local",
        )


# adam: the default for networks; adagrad: a step per weight that shrinks with its summed
# squared gradients, the usual choice for sparse linear models (it leads on small corpora:
# train.optimizer_trials chooses between them on validation).
Optimizer = Literal["adam", "adagrad"]


@dataclass(frozen=True)
class BilstmParams:
    """``train.bilstm``: the reference Embedding -> (Bi)LSTM -> max-over-time classifier."""

    embedding_dim: int
    lstm_units: int
    bidirectional: bool
    dropout: float
    embedding_dropout: float  # SpatialDropout1D after the embedding
    max_tokens: int | None  # read the first tokens of each post only; None: all
    batch_size: int  # global batch size, split across replicas
    epochs: int  # an upper bound: early stopping usually ends training sooner
    learning_rate: float
    optimizer: Optimizer

    def __post_init__(self) -> None:
        _check_model(self, "bilstm", ("embedding_dim", "lstm_units"))


@dataclass(frozen=True)
class CnnParams:
    """``train.cnn``: Embedding -> parallel Conv1D (one per kernel size) -> max over time."""

    embedding_dim: int
    filters: int  # per kernel size
    kernel_sizes: tuple[int, ...]
    dropout: float
    embedding_dropout: float
    max_tokens: int | None  # read the first tokens of each post only; None: all
    batch_size: int
    epochs: int
    learning_rate: float
    optimizer: Optimizer

    def __post_init__(self) -> None:
        _check_model(self, "cnn", ("embedding_dim", "filters"))
        _check(len(self.kernel_sizes) >= 1, "train.cnn.kernel_sizes", "a non-empty list")
        _check(min(self.kernel_sizes) >= 1, "train.cnn.kernel_sizes", "items >= 1")


@dataclass(frozen=True)
class WideParams:
    """``train.wide``: TF-IDF-weighted bag of uni- and hashed bigrams -> hidden -> softmax."""

    bigram_buckets: int  # rows of the hashed bigram table; 0: unigrams only
    embedding_dim: int
    hidden_units: int  # 0: the bag feeds the softmax directly
    sublinear_tf: bool  # weigh terms 1 + log(tf) instead of tf
    dropout: float
    batch_size: int
    epochs: int
    learning_rate: float
    optimizer: Optimizer

    def __post_init__(self) -> None:
        _check_model(self, "wide", ("embedding_dim",))
        _check(self.bigram_buckets >= 0, "train.wide.bigram_buckets", ">= 0")
        _check(self.hidden_units >= 0, "train.wide.hidden_units", ">= 0")


# Each architecture's section (its names are the Literal of TrainParams.architecture).
ARCHITECTURE_PARAMS = {"bilstm": BilstmParams, "cnn": CnnParams, "wide": WideParams}


@dataclass(frozen=True)
class EnsembleMember:
    architecture: Literal["bilstm", "cnn", "wide"]  # trained with its train.<name> section
    seed: int


@dataclass(frozen=True)
class OptimizerTrial:
    optimizer: Optimizer
    learning_rate: float

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, "train.optimizer_trials[].learning_rate", "> 0")


@dataclass(frozen=True)
class TrainParams:
    architecture: Literal["bilstm", "cnn", "wide"]  # which sub-section below builds the model
    ensemble: tuple[EnsembleMember, ...]  # empty: one model; else these members, averaged
    # Alternatives to train.<architecture>'s optimizer, tried on validation before training.
    optimizer_trials: tuple[OptimizerTrial, ...]
    early_stopping_patience: int  # epochs without a better validation loss before stopping
    seed: int
    bilstm: BilstmParams
    cnn: CnnParams
    wide: WideParams
    distribute: DistributeParams

    def __post_init__(self) -> None:
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", ">= 0")
        _check(len(self.ensemble) != 1, "train.ensemble", "empty or at least two members")
        _check(
            len(set(self.ensemble)) == len(self.ensemble),
            "train.ensemble",
            "distinct members (architecture, seed)",
        )
        # With members, they decide what is trained; an architecture none of them has would be
        # ignored without a word (`-S train.architecture=cnn` against the default ensemble).
        kinds = sorted({member.architecture for member in self.ensemble})
        _check(
            not kinds or self.architecture in kinds,
            "train.architecture",
            f"one of the ensemble members' architectures {kinds}, got {self.architecture!r}:"
            f" the members decide what is trained (train.ensemble=[] trains one"
            f" {self.architecture} model)",
        )

    @property
    def model(self) -> BilstmParams | CnnParams | WideParams:
        """The chosen architecture's section."""
        return getattr(self, self.architecture)

    # The optimisation settings of the chosen architecture (the training loop reads these).
    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    @property
    def epochs(self) -> int:
        members = [getattr(self, member.architecture).epochs for member in self.ensemble]
        return max([self.model.epochs, *members])

    @property
    def learning_rate(self) -> float:
        return self.model.learning_rate

    @property
    def optimizer(self) -> Optimizer:
        return self.model.optimizer

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    def with_optimizer(self, optimizer: Optimizer, learning_rate: float) -> TrainParams:
        """These parameters with train.<architecture>'s optimizer and learning rate replaced."""
        section = dataclasses.replace(self.model, optimizer=optimizer, learning_rate=learning_rate)
        return dataclasses.replace(self, **{self.architecture: section})

    def member(self, member: EnsembleMember) -> TrainParams:
        """These parameters for one ensemble member: its architecture and seed, no ensemble."""
        return dataclasses.replace(
            self, architecture=member.architecture, seed=member.seed, ensemble=()
        )


@dataclass(frozen=True)
class EvaluateParams:
    baseline_c: float  # LinearSVC regularisation of the TF-IDF baseline
    baseline_max_features: int | None  # TF-IDF vocabulary cap; None: no cap

    def __post_init__(self) -> None:
        _check(self.baseline_c > 0, "evaluate.baseline_c", "> 0")


@dataclass(frozen=True)
class ServeParams:
    """The serve stage (notebook 05) only: the server itself never reads params.yaml."""

    variants: tuple[str, ...] | None  # models/compressed/<name> to serve; None: every one there
    max_batch_size: int  # dynamic batching of the stage's server
    batch_timeout_ms: float

    def __post_init__(self) -> None:
        _check(self.max_batch_size >= 1, "serve.max_batch_size", ">= 1")
        _check(self.batch_timeout_ms >= 0, "serve.batch_timeout_ms", ">= 0")


@dataclass(frozen=True)
class QatParams:
    epochs: int  # quantization-aware fine-tuning of the Dense head (variant qat_int8)
    learning_rate: float

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "compress.qat.epochs", ">= 1")
        _check(self.learning_rate > 0, "compress.qat.learning_rate", "> 0")


@dataclass(frozen=True)
class PruneParams:
    target_sparsity: float  # share of zeros in every pruned weight tensor, in [0, 1)
    layers: tuple[str, ...]  # which weights to prune: embedding, lstm (kernels), dense
    epochs: int  # fine-tuning epochs in all
    ramp_epochs: int  # epochs over which sparsity rises from 0 to the target; the rest recover
    learning_rate: float
    frequency: int  # training steps between updates of the pruning masks

    def __post_init__(self) -> None:
        _check(0.0 <= self.target_sparsity < 1.0, "compress.prune.target_sparsity", "in [0, 1)")
        _check(len(self.layers) >= 1, "compress.prune.layers", "a non-empty list")
        for kind in self.layers:
            _check(kind in PRUNABLE_LAYERS, "compress.prune.layers", f"items in {PRUNABLE_LAYERS}")
        _check(self.ramp_epochs >= 1, "compress.prune.ramp_epochs", ">= 1")
        _check(self.epochs >= self.ramp_epochs, "compress.prune.epochs", ">= ramp_epochs")
        _check(self.learning_rate > 0, "compress.prune.learning_rate", "> 0")
        _check(self.frequency >= 1, "compress.prune.frequency", ">= 1")


@dataclass(frozen=True)
class DistillParams:
    student: Literal["bag_of_embeddings", "cnn", "wide"]
    embedding_dim: int
    filters: int  # cnn only: convolution filters
    temperature: float  # softens the teacher's and the student's outputs, > 0
    alpha: float  # weight of the true labels; 1 - alpha goes to the teacher's soft outputs
    epochs: int  # the budget, the same for the distilled student and the scratch control
    learning_rate: float
    patience: int  # epochs without a better validation accuracy before stopping

    def __post_init__(self) -> None:
        for key in ("embedding_dim", "filters", "epochs"):
            _check(getattr(self, key) >= 1, f"compress.distill.{key}", ">= 1")
        _check(self.temperature > 0, "compress.distill.temperature", "> 0")
        _check(0.0 <= self.alpha <= 1.0, "compress.distill.alpha", "in [0, 1]")
        _check(self.learning_rate > 0, "compress.distill.learning_rate", "> 0")
        _check(self.patience >= 0, "compress.distill.patience", ">= 0")


@dataclass(frozen=True)
class TargetParams:
    """What the variants should reach (benchmarks, not tests: a miss is reported, not raised)."""

    quantized_size_ratio: float  # int8, dynamic_int8, qat_int8: float32 TFLite bytes / theirs
    quantized_accuracy_loss_points: float  # at most, against the float32 TFLite model
    pruned_gzip_ratio: float  # pruned_float32, pruned_int8: float32 gzip bytes / theirs
    pruned_accuracy_loss_points: float  # at most, against the float32 TFLite model
    distilled_parameter_ratio: float  # the teacher's parameters / the student's
    distilled_accuracy_share: float  # the student's accuracy / the teacher's, at least
    fastest_speedup: float  # the teacher's Keras p50 latency / the fastest variant's

    def __post_init__(self) -> None:
        for key, value in dataclasses.asdict(self).items():
            _check(value >= 0, f"compress.targets.{key}", ">= 0")


@dataclass(frozen=True)
class CompressParams:
    variants: tuple[str, ...]  # which of COMPRESSION_VARIANTS to build
    seed: int
    batch_size: int  # fine-tuning and student training
    representative_examples: int  # training posts that calibrate full-integer int8
    qat: QatParams
    prune: PruneParams
    distill: DistillParams
    targets: TargetParams

    def __post_init__(self) -> None:
        _check(len(self.variants) >= 1, "compress.variants", "a non-empty list")
        for name in self.variants:
            if name not in COMPRESSION_VARIANTS:
                raise ConfigError(
                    f"compress.variants: unknown variant {name!r} "
                    f"(expected names from {list(COMPRESSION_VARIANTS)})"
                )
        _check(len(set(self.variants)) == len(self.variants), "compress.variants", "unique")
        _check(self.batch_size >= 1, "compress.batch_size", ">= 1")
        _check(self.representative_examples >= 1, "compress.representative_examples", ">= 1")


@dataclass(frozen=True)
class TrainSettings:
    startup_timeout_s: int  # local jobs: the first training step must come within this
    timeout_s: int  # local and Ray jobs: the whole training must end within this
    ray_address: str  # the Ray cluster ("host:port"); "": RAY_ADDRESS, else a local Ray
    ray_connect_timeout_s: int  # an address, or multi_worker's CPUs, not there within this: error
    ray_cpus_per_worker: int  # CPUs (and TensorFlow threads) of each member or worker
    ray_storage: str  # checkpoints every node reads: a shared path (relative: to the project)
    ray_retries: int  # times a member, or the multi-worker group, restarts after a lost node

    def __post_init__(self) -> None:
        _check(self.startup_timeout_s >= 1, "settings.train.startup_timeout_s", ">= 1")
        _check(self.ray_connect_timeout_s >= 1, "settings.train.ray_connect_timeout_s", ">= 1")
        _check(self.ray_cpus_per_worker >= 1, "settings.train.ray_cpus_per_worker", ">= 1")
        _check(bool(self.ray_storage.strip()), "settings.train.ray_storage", "a path")
        _check(self.ray_retries >= 0, "settings.train.ray_retries", ">= 0")
        _check(
            self.timeout_s >= self.startup_timeout_s,
            "settings.train.timeout_s",
            ">= startup_timeout_s",
        )


@dataclass(frozen=True)
class CompressSettings:
    latency_examples: int  # single-text predictions timed per variant (p50, p99)
    throughput_batches: int  # batches timed per variant for the throughput
    throughput_batch_size: int
    warmup: int  # untimed calls before timing
    check_examples: int  # test posts on which each reloaded variant must match its in-memory one

    def __post_init__(self) -> None:
        for key in ("latency_examples", "throughput_batches", "throughput_batch_size"):
            _check(getattr(self, key) >= 1, f"settings.compress.{key}", ">= 1")
        _check(self.warmup >= 0, "settings.compress.warmup", ">= 0")
        _check(self.check_examples >= 1, "settings.compress.check_examples", ">= 1")


@dataclass(frozen=True)
class ServeSettings:
    latency_requests: int  # sequential requests per protocol for the latency table
    startup_timeout_s: float  # the stage fails if the server is not ready within this

    def __post_init__(self) -> None:
        _check(self.latency_requests >= 1, "settings.serve.latency_requests", ">= 1")
        _check(self.startup_timeout_s > 0, "settings.serve.startup_timeout_s", "> 0")


@dataclass(frozen=True)
class Settings:
    """Run settings: how long to wait and how much to measure. No stage declares them as DVC
    ``params``, so changing one re-runs nothing."""

    train: TrainSettings
    compress: CompressSettings
    serve: ServeSettings


@dataclass(frozen=True)
class Params:
    data: DataParams
    train: TrainParams
    evaluate: EvaluateParams
    serve: ServeParams
    compress: CompressParams
    settings: Settings


@dataclass(frozen=True)
class Paths:
    """Every file location of the project, derived from its root."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        return self.root / RAW_DATA_DIR

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    def split(self, name: str) -> Path:
        return self.processed_dir / f"{name}.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.processed_dir / TOKENIZER_FILE

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def classifier_dir(self) -> Path:
        return self.models_dir / "classifier"

    @property
    def compressed_dir(self) -> Path:
        return self.models_dir / "compressed"

    @property
    def repository_dir(self) -> Path:
        return self.models_dir / "repository"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def metrics_dir(self) -> Path:
        return self.reports_dir / "metrics"

    @property
    def figures_dir(self) -> Path:
        return self.reports_dir / "figures"

    @property
    def dvclive_dir(self) -> Path:
        return self.reports_dir / "train"

    @property
    def train_backup_dir(self) -> Path:
        """Training state backed up each epoch, to resume an interrupted run (not an output)."""
        return self.root / ".maas" / "train-backup"


def load_params(
    path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` into typed, frozen parameters.

    Args:
        path: the parameter file.
        overrides: dotted keys applied on top of the file, e.g. ``{"train.epochs": 2}``.

    Raises:
        ConfigError: the file is missing or does not fit the schema; the message names the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path.resolve()}")
    with path.open(encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(Params, raw, prefix="")


def parse_section(cls: type[Any], raw: Any, *, name: str) -> Any:
    """One section from plain data (e.g. ``TrainParams`` from ``to_dict``), checked as by
    :func:`load_params`; ``name`` prefixes the keys in error messages."""
    return _build(cls, raw, prefix=f"{name}.")


def project_paths(params_file: str | Path = "params.yaml") -> Paths:
    """The project's paths, rooted at the folder that holds ``params_file``."""
    return Paths(Path(params_file).resolve().parent)


def to_dict(params: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready data for a parameter object (for provenance records)."""
    return _plain(dataclasses.asdict(params))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _check_model(section: Any, name: str, sizes: tuple[str, ...]) -> None:
    if getattr(section, "max_tokens", None) is not None:
        _check(section.max_tokens >= 1, f"train.{name}.max_tokens", ">= 1 or null")
    for key in (*sizes, "batch_size", "epochs"):
        _check(getattr(section, key) >= 1, f"train.{name}.{key}", ">= 1")
    for key in ("dropout", "embedding_dropout"):
        if hasattr(section, key):
            _check(0.0 <= getattr(section, key) < 1.0, f"train.{name}.{key}", "in [0, 1)")
    _check(section.learning_rate > 0, f"train.{name}.learning_rate", "> 0")


def _owner_hint(key: str, prefix: str) -> str:
    """Where an unknown ``train`` key belongs: '; lstm_units is a parameter of train.bilstm'."""
    if not prefix.startswith("train."):
        return ""
    owners = [
        name
        for name, cls in ARCHITECTURE_PARAMS.items()
        if key in {f.name for f in dataclasses.fields(cls)}
        and not prefix.startswith(f"train.{name}.")
    ]
    return f"; {key} is a parameter of train.{owners[0]}" if owners else ""


def _check(ok: bool, key: str, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {expectation}")


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    if leaf not in node:
        raise ConfigError(f"override {dotted!r}: unknown key")
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        hint = _owner_hint(unknown[0], prefix)
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of {fields}){hint}")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing key")
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in fields}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"{key}: unsupported type in schema: {hint!r}")  # a bug in this module


def _describe(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"
