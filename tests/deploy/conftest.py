"""Rendering helpers for the Helm chart tests: the real Helm v4 engine, no binary, no cluster."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="dev extra: pip install helm-python-sdk")

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "aeterna"
RELEASE = "aeterna"
NAMESPACE = "aeterna"

Render = Callable[..., list[dict[str, Any]]]


def values_file(name: str) -> dict[str, Any]:
    """A values file of the chart, parsed."""
    loaded = yaml.safe_load((CHART_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, recursively (what several -f files do)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render_chart(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every manifest the chart renders for ``values``, as parsed documents."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                documents.append(document)
    return documents


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path is limited to about 100 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="aeterna-chart-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def chart() -> Any:
    """The chart, loaded once."""
    return helm_python.Chart.load(str(CHART_DIR))


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    """Render a values file (or none) with optional overrides on top."""

    def _render(file: str | None = None, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        values = values_file(file) if file else {}
        return render_chart(chart, deep_merge(values, overrides or {}))

    return _render


def find(documents: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one document of ``kind`` whose name ends with ``name_suffix``."""
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def kinds(documents: list[dict[str, Any]]) -> set[str]:
    """The kinds rendered."""
    return {d["kind"] for d in documents}
