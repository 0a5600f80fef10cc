"""Safe, atomic output directories and strict JSON configs.

Every artifact tfkit writes goes to a temporary sibling directory first and is renamed
into place only when complete, so a crash never leaves a half-written model that looks
whole; an existing output is replaced only when it is a tfkit artifact of the same kind,
so a user's own folder is never deleted. Configs are dataclasses that round-trip to JSON; reading one back rejects unknown
keys instead of silently ignoring them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

from tfkit.errors import TfkitError

T = TypeVar("T")


# What tfkit writes into each kind of artifact directory. An existing --out is replaced only when it
# holds an artifact of the same kind and nothing else, so a user's folder is never deleted.
MODEL_DIR_FILES = frozenset({"model.keras", "config.json", "vocab.txt", "history.json", "metrics.json", "heldout.jsonl"})
BENCH_FILES = frozenset({"bench.json", "bench.md", "bench.png"})
KINDS = ("model", "export", "bench")
_TEMP = re.compile(r"^\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[\w]+$")
log = logging.getLogger("tfkit")


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def artifact_kind(path: str | os.PathLike) -> str | None:
    """`model`, `export` or `bench` when `path` is a complete tfkit artifact of that kind with nothing else in it, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    entries = {p.name for p in path.iterdir()}
    config = _json_object(path / "config.json")
    if (path / "model.keras").is_file() and config and config.get("kind") in ("teacher", "student") and entries <= MODEL_DIR_FILES:
        return "model"
    manifest = _json_object(path / "manifest.json")
    if manifest and isinstance(manifest.get("files"), dict) and "artifacts" in manifest \
            and entries <= {*manifest["files"], "manifest.json"} and all((path / f).is_file() for f in manifest["files"]):
        return "export"
    if (path / "bench.json").is_file() and entries <= BENCH_FILES:
        return "bench"
    return None


def check_model_dir(path: str | os.PathLike) -> None:
    """A model directory to read must at least hold its model (the rest is checked on loading)."""
    if not (Path(path) / "model.keras").is_file():
        raise TfkitError(f"not a tfkit model directory: {path} (no model.keras); train one with `tfkit train`")


def check_output(out: str | os.PathLike, kind: str, inputs: tuple = (), flag: str = "--out") -> None:
    """Refuses, before any work starts, an output tfkit must not write or replace.

    Allowed: a path that does not exist, an empty directory, or a complete tfkit artifact of the
    same `kind` (replaced when the new one is complete). Refused: a file, the current directory,
    one of the `inputs` or a folder holding one, a folder tfkit did not write, another kind of artifact.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    path = Path(out)
    where = path.resolve()
    if where == Path.cwd().resolve():
        raise TfkitError(f"{flag} {out} is the current directory; name a new directory for the {kind}")
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source).resolve()
        if where == source_path or where in source_path.parents:
            raise TfkitError(f"{flag} {out} {'is' if where == source_path else 'contains'} the input {source}; "
                             f"write the {kind} somewhere else")
    if path.exists() and not path.is_dir():
        raise TfkitError(f"{flag} {out} is a file; name a directory for the {kind}")
    if path.is_dir() and any(path.iterdir()):
        found = artifact_kind(path)
        if found is None:
            raise TfkitError(f"{flag} {out} already exists and holds files tfkit did not write; "
                             f"tfkit replaces only a {kind} directory it wrote: choose another {flag} or move it away")
        if found != kind:
            raise TfkitError(f"{flag} {out} is a tfkit {found} directory, not a {kind} directory; choose another {flag}")
    check_writable(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary siblings of `out` left by a tfkit process that was killed (kill -9, power loss).

    A killed two-rename swap may have left the previous artifact aside with nothing at `out`:
    it is put back, not removed.
    """
    for sibling in sorted(out.parent.glob(f".{out.name}.*-*-*")):
        match = _TEMP.match(sibling.name)
        if not (match and match["name"] == out.name and sibling.is_dir()) or _alive(int(match["pid"])):
            continue
        if sibling.name.startswith(f".{out.name}.old-") and (sibling / out.name).is_dir() and not out.exists():
            os.rename(sibling / out.name, out)
        shutil.rmtree(sibling, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace(tmp: Path, out: Path) -> None:
    """Puts the complete `tmp` at `out`; at every instant `out` is the old artifact or the new one."""
    if not out.exists():
        os.rename(tmp, out)
    elif not any(out.iterdir()):
        os.rmdir(out)
        os.rename(tmp, out)
    elif _exchange(tmp, out):
        shutil.rmtree(tmp)  # now holds the old artifact
    else:  # two renames: between them `out` is briefly absent, the old artifact kept aside
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yields a temporary directory that becomes `out` only if the block succeeds.

    An existing `out` must be a tfkit artifact of the same `kind` (see `check_output`, which
    commands call before any work); it stays intact until the new one is complete. The temporary
    directory is removed on any exception, Ctrl-C and SIGTERM included; one left by a killed
    process is removed by the next run writing the same `out`.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any other dir
    except OSError as e:
        raise TfkitError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield tmp
        check_output(out, kind)  # again: something else may have appeared there while we worked
        if out.is_dir() and any(out.iterdir()):
            log.info("replacing the previous %s in %s", kind, out)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(out: str | os.PathLike) -> None:
    """Fails early (before hours of work) when `out` cannot be created."""
    parent = Path(out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TfkitError(f"cannot write to {out}: {parent} is not a writable directory")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (manifests record it; servers check it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names) -> dict[str, str | None]:
    """Installed versions of `names` (None when absent), as manifests and benchmarks record them."""
    import importlib.metadata

    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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
