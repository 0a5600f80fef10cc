"""Atomic output directories and strict JSON configs.

Every artifact tfkit writes goes to a temporary sibling directory first and is renamed
into place only when complete, so a crash never leaves a half-written model that looks
whole. Configs are dataclasses that round-trip to JSON; reading one back rejects unknown
keys instead of silently ignoring them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

from tfkit.errors import TfkitError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary directory that replaces `out` only if the block succeeds."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any other dir
    except OSError as e:
        raise TfkitError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise TfkitError(f"{out} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(out: str | os.PathLike) -> None:
    """Fails early (before hours of work) when `out` cannot be created."""
    parent = Path(out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise TfkitError(f"cannot write to {out}: {parent} is not writable")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (manifests record it; servers check it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON (dataclasses included) atomically."""
    path = Path(path)
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Builds dataclass `cls` from `data`, recursing into nested dataclasses; unknown keys fail."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise TfkitError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TfkitError(f"{where}: unknown key(s) {', '.join(unknown)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise TfkitError(f"{where}: missing key(s) {', '.join(missing)}")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        if isinstance(kind, types.UnionType):  # `X | None`
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if dataclasses.is_dataclass(kind) and value is not None:
            value = from_dict(kind, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TfkitError(f"{where}: {e}") from None


def read_json(path: str | os.PathLike, cls: type[T] | None = None):
    """Reads JSON from `path`, as dataclass `cls` when given; a missing or corrupt file is a TfkitError."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise TfkitError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TfkitError(f"{path} is not valid JSON: {e}") from None
    return from_dict(cls, data, str(path)) if cls else data
