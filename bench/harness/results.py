"""Results files: ``<name>_<device tag>.json`` + ``.md``, each saying where and how it was made.

Every file records the same four facts (``PROVENANCE_KEYS``): the device label, the command that
reproduces it (``sys.argv`` written as a module command), the UTC date and the git revision of
the checkout (``+dirty`` when tracked files outside ``bench/results`` differ from it; set
``BENCH_GIT_REVISION`` where the tree has no ``.git``, e.g. a copy on a GPU host). The JSON holds
them as top-level keys next to the benchmark's payload; the markdown ends with one line naming
them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .device import device_tag

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE_KEYS = ("device", "command", "date", "git_revision")


def reproduce_command(argv: list[str] | None = None, python: str = "python") -> str:
    """``argv`` (default ``sys.argv``) as ``<python> -m <module> <args>``, shell-quoted.

    A script inside this checkout becomes its module name (``bench/cpu_decode.py`` ->
    ``bench.cpu_decode``, ``bench/vllm_bench/__main__.py`` -> ``bench.vllm_bench``); anything else
    is kept as a path. ``python`` may carry an environment prefix
    (``"VLLM_USE_FLASHINFER_SAMPLER=0 python3"``), written as given.
    """
    argv = list(sys.argv if argv is None else argv)
    script, args = (argv[0] if argv else ""), argv[1:]
    target = shlex.quote(script)
    path = Path(script).resolve() if script else None
    if path is not None and path.suffix == ".py" and path.is_relative_to(ROOT):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            parts.pop()
        target = "-m " + ".".join(parts)
    return " ".join([python, target, *(shlex.quote(a) for a in args)])


def git_revision(root: Path = ROOT) -> str:
    """Commit of ``root`` (+dirty for changes outside bench/results), ``$BENCH_GIT_REVISION``, or "unknown"."""
    if os.environ.get("BENCH_GIT_REVISION"):
        return os.environ["BENCH_GIT_REVISION"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class Provenance:
    device: str
    command: str
    date: str
    git_revision: str

    @classmethod
    def collect(cls, device: str, command: str | None = None, python: str = "python") -> Provenance:
        """Facts of this run; ``command`` defaults to ``reproduce_command(python=python)``."""
        return cls(device=device, command=command or reproduce_command(python=python),
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), git_revision=git_revision())

    @property
    def tag(self) -> str:
        return device_tag(self.device)

    def footer(self) -> str:
        return (f"Device: {self.device} · reproduce: `{self.command}` · date {self.date} · "
                f"git {self.git_revision}")


def write_files(stem: Path, payload: dict[str, Any], markdown: str, prov: Provenance) -> None:
    """``stem``.json (provenance keys first, then ``payload``) and ``stem``.md (``markdown`` + footer)."""
    clash = [k for k in PROVENANCE_KEYS if k in payload]
    if clash:
        raise ValueError(f"payload keys {clash} are written by the harness; drop them from the payload")
    stem.parent.mkdir(parents=True, exist_ok=True)
    data = {**asdict(prov), **payload}
    stem.with_name(stem.name + ".json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    stem.with_name(stem.name + ".md").write_text(markdown.rstrip("\n") + "\n\n" + prov.footer() + "\n")


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str, prov: Provenance) -> Path:
    """Write ``out_dir/<name>_<device tag>.json`` and ``.md``; returns that stem."""
    stem = Path(out_dir) / f"{name}_{prov.tag}"
    write_files(stem, payload, markdown, prov)
    return stem


def read_results(path: Path) -> dict[str, Any]:
    """The payload of an earlier results JSON (provenance keys dropped), or {} if there is none."""
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in PROVENANCE_KEYS}
