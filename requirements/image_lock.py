"""The Docker image's locks: regenerate them (``main``) and check them against pyproject.toml (``problems``).

``image.lock`` pins the runtime dependencies ([project] dependencies + the
``qdrant`` extra the image installs), ``build.lock`` the build backend
([build-system] requires), both with hashes, resolved by ``uv pip compile``
for CPython 3.11 on linux x86_64 and aarch64 (the two resolutions must agree,
so one file serves both). Each lock's header records a sha256 of the
specifiers it was compiled from; ``problems`` recomputes it, so a pyproject
edit without a regeneration fails tests/contracts/test_image.py without
asking any index.

Regenerate (keeps the current pins where they still satisfy pyproject.toml;
``--upgrade`` moves everything to the newest allowed versions)::

    .venv/bin/python requirements/image_lock.py [--upgrade]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON_VERSION = "3.11"
PLATFORMS = ("x86_64-manylinux_2_28", "aarch64-manylinux_2_28")
IMAGE_EXTRAS = ("qdrant",)
REGENERATE = ".venv/bin/python requirements/image_lock.py"
DIGEST_PREFIX = "# dependencies-sha256: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass(frozen=True)
class Lock:
    """One lock file: its name, what it is compiled from, and what it is for."""

    file_name: str
    purpose: str
    extras: tuple[str, ...]

    def requirements(self, pyproject_text: str) -> list[Requirement]:
        """The requirements this lock must satisfy, from pyproject.toml's text."""
        data = tomllib.loads(pyproject_text)
        if self.file_name == BUILD.file_name:
            return [Requirement(line) for line in data["build-system"]["requires"]]
        project = data["project"]
        lines = list(project.get("dependencies", []))
        for extra in self.extras:
            lines += project.get("optional-dependencies", {}).get(extra, [])
        return [Requirement(line) for line in lines]

    def digest(self, pyproject_text: str) -> str:
        """sha256 of the specifiers (normalized, sorted): changes exactly when the lock's inputs change."""
        data = tomllib.loads(pyproject_text)
        inputs = {
            "requirements": sorted(str(requirement) for requirement in self.requirements(pyproject_text)),
            "requires-python": data["project"].get("requires-python", ""),
            "python": PYTHON_VERSION,
            "platforms": list(PLATFORMS),
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


IMAGE = Lock(
    "image.lock", "the Docker image's runtime dependencies (pyproject [project] dependencies + qdrant)", IMAGE_EXTRAS
)
BUILD = Lock("build.lock", "the build backend of the Docker image's wheel (pyproject [build-system] requires)", ())
LOCKS = (IMAGE, BUILD)


def pins(lock_text: str) -> dict[str, Version]:
    """``name==version`` lines of a lock, by canonical name."""
    found: dict[str, Version] = {}
    for line in lock_text.splitlines():
        match = _PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def recorded_digest(lock_text: str) -> str | None:
    """The digest the lock's header records."""
    for line in lock_text.splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line.removeprefix(DIGEST_PREFIX).strip()
    return None


def problems(lock: Lock, pyproject_text: str, lock_text: str) -> list[str]:
    """Why ``lock_text`` is stale for ``pyproject_text`` (empty: it is fresh)."""
    found: list[str] = []
    pinned = pins(lock_text)
    for requirement in lock.requirements(pyproject_text):
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0", "sys_platform": "linux"}
        ):
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{requirement.name} is not pinned in {lock.file_name}")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name}=={version} in {lock.file_name} does not satisfy {requirement}")
    if "--hash=sha256:" not in lock_text:
        found.append(f"{lock.file_name} has no hashes")
    if recorded_digest(lock_text) != lock.digest(pyproject_text):
        found.append(f"{lock.file_name} was compiled from other dependency specifiers than pyproject.toml's")
    if found:
        found.append(f"regenerate: {REGENERATE}")
    return found


def header(lock: Lock, pyproject_text: str) -> str:
    """The lock's header: what it is, how to regenerate it, the digest of its inputs."""
    return (
        f"# requirements/{lock.file_name}: {lock.purpose},\n"
        f"# with hashes, for CPython {PYTHON_VERSION} on {' and '.join(PLATFORMS)}.\n"
        "# Generated by uv (uv pip compile --only-binary :all: --generate-hashes); do not edit. After changing those\n"
        "# dependencies in pyproject.toml, regenerate (tests/contracts/test_image.py fails until you do):\n"
        f"#   {REGENERATE}            # keep current pins where still allowed\n"
        f"#   {REGENERATE} --upgrade  # newest allowed versions\n"
        f"{DIGEST_PREFIX}{lock.digest(pyproject_text)}\n"
    )


def _compile(lock: Lock, pyproject_text: str, platform: str, previous: str, upgrade: bool) -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not installed: pip install -e '.[dev]'")
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "requirements.in"
        source.write_text("".join(f"{requirement}\n" for requirement in lock.requirements(pyproject_text)))
        output = Path(work) / "out.txt"
        output.write_text(previous)  # uv prefers the pins already in the output file
        command = [uv, "pip", "compile", str(source), "--python-version", PYTHON_VERSION, "--python-platform"]
        command += [platform, "--only-binary", ":all:", "--generate-hashes", "--no-header", "--no-annotate"]
        command += ["-q", "-o", str(output)]
        if upgrade:
            command.append("--upgrade")
        subprocess.run(command, check=True, cwd=ROOT)
        return output.read_text()


def regenerate(lock: Lock, upgrade: bool) -> None:
    """Compile ``lock`` for every platform, insist they agree, write it with its header."""
    pyproject_text = (ROOT / "pyproject.toml").read_text()
    path = HERE / lock.file_name
    previous = path.read_text() if path.exists() else ""
    bodies = {platform: _compile(lock, pyproject_text, platform, previous, upgrade) for platform in PLATFORMS}
    if len(set(bodies.values())) != 1:
        raise SystemExit(f"{lock.file_name}: the platforms resolve differently; one lock cannot serve them all")
    path.write_text(header(lock, pyproject_text) + next(iter(bodies.values())))
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    """Regenerate every lock."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions instead of the current pins")
    args = parser.parse_args(argv)
    for lock in LOCKS:
        regenerate(lock, args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
