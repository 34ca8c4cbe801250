"""Generate the reference pages: docs/api.md from the proto comments and
docs/configuration.md from the configuration model.

Nothing in those pages is written by hand, so they cannot drift: CI runs this
with ``--check`` and fails when a page differs from what it would write.

    python tools/gen_docs.py            # rewrite docs/api.md and docs/configuration.md
    python tools/gen_docs.py --check    # exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from google.protobuf import descriptor_pb2
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from aeterna_shared.config import AeternaConfig, env_name
from aeterna_shared.config.units import format_duration, parse_byte_size

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"

# Paths into FileDescriptorProto, as protoc's SourceCodeInfo numbers them.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _ENUM_VALUE, _METHOD = 2, 3, 2, 2


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): " ".join(line.strip() for line in location.leading_comments.strip().splitlines())
        for location in file.source_code_info.location
        if location.leading_comments
    }


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        name = field.type_name.lstrip(".")
    else:
        name = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()
    repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return f"repeated {name}" if repeated else name


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, no stray pipes or tags."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def api_markdown(image: descriptor_pb2.FileDescriptorSet) -> str:
    """The API reference page."""
    out = [
        "# API reference",
        "",
        "Generated from the comments in `protos/` by `tools/gen_docs.py`; do not edit.",
        "",
    ]
    for file in sorted(image.file, key=lambda f: f.name):
        if not file.name.startswith("aeterna/"):
            continue
        comments = _comments(file)
        out += [f"## `{file.package}` — `{file.name}`", ""]
        for s_index, service in enumerate(file.service):
            out += [f"### service `{service.name}`", "", comments.get((_SERVICE, s_index), ""), ""]
            out += ["| RPC | request → response | description |", "|---|---|---|"]
            for m_index, method in enumerate(service.method):
                arrow_in = "stream " if method.client_streaming else ""
                arrow_out = "stream " if method.server_streaming else ""
                request = method.input_type.rsplit(".", 1)[-1]
                response = method.output_type.rsplit(".", 1)[-1]
                shape = f"{arrow_in}`{request}` → {arrow_out}`{response}`"
                text = comments.get((_SERVICE, s_index, _METHOD, m_index), "")
                out.append(f"| `{method.name}` | {shape} | {_cell(text)} |")
            out.append("")
        for m_index, message in enumerate(file.message_type):
            out += [f"### message `{message.name}`", "", comments.get((_MESSAGE, m_index), ""), ""]
            if message.field:
                out += ["| field | type | description |", "|---|---|---|"]
                for f_index, field in enumerate(message.field):
                    text = comments.get((_MESSAGE, m_index, _FIELD, f_index), "")
                    out.append(f"| `{field.name}` = {field.number} | `{_type_name(field)}` | {_cell(text)} |")
                out.append("")
        for e_index, enum in enumerate(file.enum_type):
            out += [f"### enum `{enum.name}`", "", comments.get((_ENUM, e_index), ""), ""]
            out += ["| value | number | description |", "|---|---|---|"]
            for v_index, value in enumerate(enum.value):
                text = comments.get((_ENUM, e_index, _ENUM_VALUE, v_index), "")
                out.append(f"| `{value.name}` | {value.number} | {_cell(text)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _build_image() -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, "image.binpb")
        subprocess.run([str(BUF), "build", "-o", str(target)], cwd=ROOT, check=True)
        return descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes())


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _format_default(value: object) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if value is None:
        return "(unset)"
    if isinstance(value, tuple | list) and not value:
        return "[]"
    if isinstance(value, dict) and not value:
        return "{}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_text(annotation: object, metadata: list[object]) -> str:
    if any(getattr(item, "func", None) is parse_byte_size for item in metadata):
        return "size"
    if annotation is timedelta:
        return "duration"
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(arg) for arg in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(kept) < len(typing.get_args(annotation))
        text = " or ".join(_type_text(arg, []) for arg in kept)
        return f"{text} (optional)" if optional else text
    return str(annotation).replace("typing.", "")


def _rows(model: type[BaseModel], keys: tuple[str, ...], names: tuple[str, ...]) -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = (*keys, field.alias or name)
        path = (*names, name)
        child = _model_of(field.annotation)
        if child is not None:
            yield from _rows(child, key, path)
            continue
        default = field.get_default(call_default_factory=True)
        shown = "" if default is PydanticUndefined else _format_default(default)
        description = _cell(field.description or "")
        yield (
            f"| `{'.'.join(key)}` | {_type_text(field.annotation, field.metadata)} "
            f"| `{shown}` | `{env_name(path)}` | {description} |"
        )


def configuration_markdown() -> str:
    """The configuration reference page."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `aeterna_shared/config/model.py` by `tools/gen_docs.py`; do not edit.",
        "",
        "Keys are written in YAML as below (the spec's spelling). Durations accept `500ms`, `5s`, `30m`, `1h`, `1d`;",
        "sizes accept `10485760`, `10MB`, `1Gi`. Every key can be overridden by the environment variable shown.",
        "Unknown keys are errors.",
        "",
        "| key | type | default | environment | meaning |",
        "|---|---|---|---|---|",
        *_rows(AeternaConfig, (), ()),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale instead of writing it")
    args = parser.parse_args(argv)
    pages = {
        ROOT / "docs" / "api.md": api_markdown(_build_image()),
        ROOT / "docs" / "configuration.md": configuration_markdown(),
    }
    stale = [path for path, text in pages.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale; run: python tools/gen_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in pages.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
