"""Where a run's training checkpoints live and whether they belong to this run (no TensorFlow here).

Checkpoints go to a hidden sibling of the output, `.<name>.resume/<part>/` (one part per model
a command trains), so the output directory itself appears only when training completes.
`resume.json` in a part is the commit point: it is written (atomically) after the checkpoint
it names is complete, and it records the run's settings, so the same command after a crash resumes and a different one is refused before
any work starts, never mixed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from tfkit.errors import TfkitError

RESUME_FILE = "resume.json"


def resume_dir(out: str | Path) -> Path:
    """The checkpoint area of the run writing `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


OPERATIONAL = ("strategy", "checkpoint_every")  # how a run is carried out, not what it computes


def run_settings(config, sources: dict[str, str | None]) -> dict:
    """What makes two runs the same run: every setting as given, the inputs' content, the strategy and cluster size."""
    from tfkit.cluster import resolve_strategy
    from tfkit.data import fingerprint

    strategy, cluster = resolve_strategy(config.strategy, config.devices)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL}
    hashes = {name: path and fingerprint(path) for name, path in sources.items()}
    return {"config": settings, "sha256": hashes, "strategy": strategy, "workers": len(cluster.workers) if cluster else 1}


def read_state(area: Path) -> dict | None:
    """The last committed checkpoint's state, or None when there is none (a fresh run)."""
    try:
        state = json.loads((area / RESUME_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TfkitError(f"{area / RESUME_FILE} is unreadable ({e}); delete {area} to start the run over") from None
    if not isinstance(state, dict) or "settings" not in state or "checkpoint" not in state:
        raise TfkitError(f"{area / RESUME_FILE} is not a tfkit resume state; delete {area} to start the run over")
    return state


def check_resume(out: str | Path, settings: dict) -> bool:
    """Whether a previous run of these settings left checkpoints to resume; another run's are refused."""
    area = resume_dir(out)
    if area.exists() and not area.is_dir():
        raise TfkitError(f"{area} is a file; tfkit keeps its training checkpoints there: move it away")
    states = [read_state(part) for part in sorted(area.iterdir()) if part.is_dir()] if area.is_dir() else []
    wanted = json.loads(json.dumps(settings))  # tuples and lists compare alike
    for state in filter(None, states):
        saved = json.loads(json.dumps(state["settings"]))
        if saved != wanted:
            differ = sorted(_differences(saved, wanted))
            raise TfkitError(f"{area} holds the checkpoints of a run with other settings ({', '.join(differ)}); "
                             f"rerun with that run's settings to resume it, or delete {area} to start over")
    return any(states)


def remove_resume(out: str | Path) -> None:
    """The run's output is complete: its checkpoints go."""
    shutil.rmtree(resume_dir(out), ignore_errors=True)


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if key not in a or key not in b:
                out.append(name)
            else:
                out.extend(_differences(a[key], b[key], f"{name}."))
        return out
    return [] if a == b else [prefix.rstrip(".").replace("config.", "", 1)]
