"""The site's generated pages: reference from the code, results and benchmarks from reports/.

An MkDocs hook (``hooks:`` in ``mkdocs.yml``): on every build it adds pages that are never
written by hand, so they cannot drift from what they describe:

- ``reference/cli.md``: the ``--help`` of ``maas`` and of every sub-command, from its parser;
- ``reference/parameters.md``: every ``params.yaml`` key with its type (``maas.config``'s
  dataclasses), its default (``params.yaml``) and its meaning (the comments of both);
- ``reference/http.md`` and ``reference/openapi.json``: the server's OpenAPI, from the app;
- ``reference/grpc.md``: the services and messages of every ``.proto`` the server implements;
- ``results.md``: the pipeline's report page, ``reports/README.md``, with its figures;
- ``explanation/benchmarks/<name>.md``: each ``reports/benchmarks/**/*.md`` with its figures.

Nothing is written into ``docs/``: the pages exist only in the build (MkDocs' generated
files), so ``mkdocs serve`` does not rebuild in a loop. Everything is read offline, in-process,
without TensorFlow: a build takes seconds.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "reports" / "benchmarks"
PROTOS = ROOT / "src" / "maas" / "serving" / "grpc"
HELP_COLUMNS = "88"  # the width of a code block on the site
# Commands run as modules (their parsers are built inside main()): module -> what runs it.
MODULE_COMMANDS = {"maas.report": "`make report`, and the pipeline's last stage, `report`."}
# A relative Markdown image or link target: ![alt](target) or [text](target).
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")


def on_startup(command, dirty):
    """Describe this checkout's code, whichever ``maas`` the environment has installed."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))


def on_files(files, config):
    """Add every generated page (and the figures they show) to the build."""
    from mkdocs.structure.files import File

    pages = {
        "reference/cli.md": cli_reference(),
        "reference/parameters.md": parameters_reference(),
        "reference/grpc.md": grpc_reference(),
    }
    openapi = openapi_schema()
    pages["reference/http.md"] = http_reference(openapi)
    pages["reference/openapi.json"] = json.dumps(openapi, indent=2) + "\n"
    assets: dict[str, Path] = {}
    pages["results.md"] = report_page(ROOT / "reports" / "README.md", "results.md", assets)
    for uri, text in benchmark_pages(assets).items():
        pages[uri] = text
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    for uri, path in assets.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# --- the command line --------------------------------------------------------------------


def cli_reference() -> str:
    """Every command's ``--help``, ``maas`` first, then each sub-command depth first."""
    from maas import cli

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps at the terminal's width
    try:
        sections = [
            "# Command line\n",
            "Generated from the parsers of `maas` (`maas.cli`) at build time: each block is "
            "exactly what `--help` prints.\n",
        ]
        for command, parser in walk_parsers("maas", cli.build_parser()):
            depth = min(command.count(" ") + 2, 4)
            sections.append(f"{'#' * depth} `{command}`\n\n```text\n{parser.format_help()}```\n")
        for module, purpose in MODULE_COMMANDS.items():
            path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
            help_text = subprocess.run(
                [sys.executable, "-m", module, "--help"], env={**os.environ, "PYTHONPATH": path},
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout  # fmt: skip
            sections.append(f"## `python -m {module}`\n\n{purpose}\n\n```text\n{help_text}```\n")
        return "\n".join(sections)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def walk_parsers(command: str, parser: argparse.ArgumentParser):
    yield command, parser
    for action in parser._actions:  # argparse offers no public way to list sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(f"{command} {name}", sub)


# --- params.yaml ---------------------------------------------------------------------------


def parameters_reference() -> str:
    """One table per section of ``params.yaml``: key, type, default, meaning."""
    from maas import config

    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    yaml_comments = params_yaml_comments((ROOT / "params.yaml").read_text())
    lines = [
        "# Parameters",
        "",
        "Every key of `params.yaml`, generated at build time: the type from `maas.config`'s "
        "dataclasses (which reject unknown, missing or ill-typed keys), the default from "
        "`params.yaml` (the only home of defaults), the meaning from the comments of both. "
        "The stage sections change results; `settings` holds run settings, which re-run "
        "nothing. Try a value without editing the file: `dvc exp run -S train.wide.epochs=5`.",
        "",
    ]
    for field in dataclasses.fields(config.Params):
        lines += section_tables(
            field.name, resolved_type(config.Params, field.name), defaults.get(field.name),
            yaml_comments,
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def section_tables(prefix: str, cls: type, defaults: dict | None, yaml_comments: dict) -> list:
    depth = min(prefix.count(".") + 2, 4)
    lines = [f"{'#' * depth} `{prefix}`", ""]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        lines += [inspect.cleandoc(cls.__doc__), ""]
    code_comments = field_comments(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}"
        kind = resolved_type(cls, field.name)
        default = field_default(field, defaults or {})
        if dataclasses.is_dataclass(kind):
            nested.append((key, kind, default))
            continue
        meaning = yaml_comments.get(key) or code_comments.get(field.name, "")
        rows.append(
            f"| `{field.name}` | {type_text(kind)} | `{default_text(default)}` | "
            f"{escape_cell(meaning)} |"
        )
    if rows:
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    for key, kind, default in nested:
        lines += section_tables(key, kind, default, yaml_comments)
    return lines


def field_default(field: dataclasses.Field, defaults: dict):
    """The value in ``params.yaml``, else the dataclass's own default (a key the file omits)."""
    if field.name in defaults:
        return defaults[field.name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def resolved_type(cls: type, name: str):
    return typing.get_type_hints(cls)[name]


def type_text(kind) -> str:
    """A type as a reader would write it: ``int``, ``list of str or null``, ``one of a, b``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is tuple:
        return f"list of {type_text(args[0])}" if args else "list"
    if dataclasses.is_dataclass(kind):
        return f"mapping ({', '.join(f.name for f in dataclasses.fields(kind))})"
    return getattr(kind, "__name__", str(kind))


def default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if isinstance(value, str | bool) else yaml_flow(value)


def yaml_flow(value) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
    )


def escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the dataclass's source."""
    source_lines, _ = inspect.getsourcelines(cls)
    comments = {}
    for line in source_lines:
        match = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def params_yaml_comments(text: str) -> dict[str, str]:
    """Dotted key -> its comments in ``params.yaml``.

    A key's comment is its line's own, the comments that continue it on the lines below (a
    comment alone on a line, or after a list item, indented past where a nested key would
    start) and a comment block just above it, at its own indentation.
    """
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last_key, last_indent = None, -1
    for raw in text.splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        continues = last_key is not None and indent > last_indent + 2
        if not stripped:
            above = []
            continue
        if stripped.startswith(("#", "- ")):
            note = stripped.lstrip("#").strip() if stripped.startswith("#") else ""
            if stripped.startswith("- "):
                note, continues = trailing_comment(stripped), last_key is not None
            if note and continues:
                comments[last_key] = f"{comments.get(last_key, '')} {note}".strip()
            elif note:
                above.append(note)
            continue
        match = re.match(r"([\w-]+):\s*(.*)$", stripped)
        if not match:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([name for _, name in stack] + [match.group(1)])
        stack.append((indent, match.group(1)))
        trailing = trailing_comment(match.group(2))
        parts = [*above, trailing] if trailing else above
        if parts and indent > 0:
            comments[key] = " ".join(parts)
        above, last_key, last_indent = [], key, indent
    return comments


def trailing_comment(value: str) -> str:
    """The ``# comment`` after a YAML value, outside quotes."""
    quote = None
    for index, char in enumerate(value):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (index == 0 or value[index - 1].isspace()):
            return value[index + 1 :].strip()
    return ""


# --- the HTTP API --------------------------------------------------------------------------


def openapi_schema() -> dict:
    """The OpenAPI document of the app ``maas serve`` runs (over an empty repository)."""
    from maas.serving.app import ServerConfig, create_app

    with tempfile.TemporaryDirectory() as repository:
        return create_app(ServerConfig(model_repository=Path(repository))).openapi()


def http_reference(openapi: dict) -> str:
    lines = [
        "# HTTP API",
        "",
        f"{openapi['info']['description']} Generated at build time from the FastAPI app of "
        "`maas serve` (`maas.serving.app`); the whole document is "
        "[openapi.json](openapi.json), and a running server shows it at `/docs`. "
        "`GET /metrics` (Prometheus) is served beside these routes.",
        "",
        "| method | path | summary | request body |",
        "| --- | --- | --- | --- |",
    ]
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {})
            schema = next(iter(body.values()), {}).get("schema", {}) if body else {}
            reference = schema.get("$ref", "").rsplit("/", 1)[-1]
            body_text = f"[`{reference}`](#{reference.lower()})" if reference else ""
            summary = operation.get("summary", "")
            description = operation.get("description", "").split("\n\n")[0]
            text = f"{summary}: {description}" if description else summary
            lines.append(f"| `{method.upper()}` | `{path}` | {escape_cell(text)} | {body_text} |")
    lines += ["", "## Schemas", ""]
    for name, schema in openapi.get("components", {}).get("schemas", {}).items():
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [escape_cell(schema["description"]), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
            for field, spec in properties.items():
                lines.append(
                    f"| `{field}` | {escape_cell(schema_type(spec))} | "
                    f"{'yes' if field in required else ''} | "
                    f"{escape_cell(spec.get('description', ''))} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def schema_type(spec: dict) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(schema_type(s) for s in spec[key])
    if spec.get("type") == "array":
        return f"array of {schema_type(spec.get('items', {}))}"
    return spec.get("type", "any")


# --- gRPC ----------------------------------------------------------------------------------


def grpc_reference() -> str:
    lines = [
        "# gRPC",
        "",
        "Generated at build time from the `.proto` files in `src/maas/serving/grpc/` (through "
        "their compiled descriptors) with `maas serve --grpc-port PORT`. The server also "
        "implements TensorFlow Serving's `tensorflow.serving.PredictionService` (`Predict`, "
        "`GetModelMetadata`) and `ModelService.GetModelStatus` (the protos of the "
        "`tensorflow-serving-api` package), `grpc.health.v1.Health` and server reflection, so "
        "`grpcurl` lists and describes every service.",
        "",
    ]
    for proto in sorted(PROTOS.glob("*.proto")):
        module = importlib.import_module(f"maas.serving.grpc.{proto.stem}_pb2")
        descriptor = module.DESCRIPTOR
        lines += [f"## `{proto.name}` (package `{descriptor.package}`)", ""]
        for service in descriptor.services_by_name.values():
            served = implemented_methods(service.name)
            lines += [
                f"### `{service.full_name}`",
                "",
                "| method | request | response | served |",
                "| --- | --- | --- | --- |",
            ]
            lines += [
                f"| `{m.name}` | `{m.input_type.name}` | `{m.output_type.name}` | "
                f"{'yes' if m.name in served else 'no: `UNIMPLEMENTED`'} |"
                for m in service.methods
            ]
            lines.append("")
        text = proto.read_text()
        lines += [
            '??? note "The whole file, with its comments"',
            "",
            "    ```protobuf",
            *[f"    {line}".rstrip() for line in text.splitlines()],
            "    ```",
            "",
        ]
    return "\n".join(lines) + "\n"


def implemented_methods(service: str) -> set[str]:
    """The methods that a servicer class in ``maas/serving/grpc/*.py`` defines for ``service``.

    Read from the source, not imported: the servicer modules import TensorFlow's protos.
    """
    methods: set[str] = set()
    for module in PROTOS.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).rsplit(".", 1)[-1] == f"{service}Servicer" for base in node.bases
            ):
                methods |= {
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                }
    return methods


# --- reports ---------------------------------------------------------------------------------


def report_page(source: Path, uri: str, assets: dict[str, Path], title: str = "") -> str:
    """A Markdown report as a page: its relative figures and files travel with it."""
    text = source.read_text()
    page_dir = Path(uri).parent
    asset_dir = page_dir / "assets" / Path(uri).stem

    def relink(match: re.Match) -> str:
        label, target = match.groups()
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path = (source.parent / target).resolve()
        if not path.is_file():
            return f"{label.lstrip('!')} (`{target}`: not in this checkout)"
        relative = asset_dir / path.name
        assets[relative.as_posix()] = path
        return f"{label}({relative.relative_to(page_dir).as_posix()})"

    body = LINK.sub(relink, text)
    if not body.lstrip().startswith("# "):
        body = f"# {title or source.stem}\n\n{body}"
    return body


def benchmark_pages(assets: dict[str, Path]) -> dict[str, str]:
    """``explanation/benchmarks/<name>.md`` for each benchmark report, figures included."""
    pages = {}
    for source in sorted(BENCHMARKS.rglob("*.md")):
        name = "-".join(source.relative_to(BENCHMARKS).with_suffix("").parts)
        uri = f"explanation/benchmarks/{name}.md"
        body = report_page(source, uri, assets, title=name.replace("-", " ").capitalize())
        heading, _, rest = body.partition("\n")
        origin = (
            f"Rendered at build time from `{source.relative_to(ROOT)}`, which "
            f"`{script_of(name)}` writes; the numbers are that file's, never copied."
        )
        figures = [
            f"![{png.stem}](assets/{name}/{png.name})"
            for png in sorted(source.parent.glob(f"{source.stem}*.png"))
            if png.name not in rest
        ]
        for png in sorted(source.parent.glob(f"{source.stem}*.png")):
            assets.setdefault(f"explanation/benchmarks/assets/{name}/{png.name}", png)
        pages[uri] = "\n\n".join([heading, origin, rest.strip(), *figures]) + "\n"
    return pages


def script_of(name: str) -> str:
    """The benchmark script that writes a report, by its name's first word."""
    stem = name.split("-")[0]
    script = ROOT / "benchmarks" / f"{stem}.py"
    return f"benchmarks/{script.name}" if script.is_file() else "a benchmark script"
