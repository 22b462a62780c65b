"""Where a vLLM process spends its time: py-spy samples, summarised (the ``gpu profile`` phase).

At 0.5B the engine is host-bound, so the profile that says what is left is the engine core's
main thread (scheduler, input preparation, our logits processors, sampling, waiting for the GPU)
sampled from outside with py-spy — no code in the process changes and nothing pauses it
(``--nonblocking``). ``--idle`` keeps samples where the thread waits (on the GPU, on a socket),
so shares add up to wall time. ``nvidia-smi`` samples GPU utilisation meanwhile: the share of time
a kernel was running.

The pure part (``parse_raw``, ``summarise``) is unit-tested on CPU; ``record`` / ``gpu_util``
start the samplers on the GPU host.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OWN = "/service/"  # frames of this project (full filenames)
LIBS = (OWN, "/vllm/")  # frames worth naming (ours first: service/engines/vllm/ is not vLLM); torch, zmq,
# stdlib are charged to the nearest of these


@dataclass(frozen=True)
class Frame:
    func: str
    path: str
    line: int

    @property
    def label(self) -> str:
        """``vllm/v1/core/sched/scheduler.py:schedule`` (path from the package root)."""
        path = self.path
        for root in LIBS:
            if root in path:
                path = root.strip("/") + "/" + path.split(root, 1)[1]
                break
        return f"{path}:{self.func}"


@dataclass(frozen=True)
class Sample:
    thread: str
    frames: tuple[Frame, ...]  # outermost first
    count: int


def _frame(text: str) -> Frame:
    """``func (path:line)`` as py-spy writes it (``func (path)`` without a line)."""
    if text.endswith(")") and " (" in text:
        func, loc = text[:-1].rsplit(" (", 1)
        path, _, line = loc.rpartition(":")
        if path and line.isdigit():
            return Frame(func, path, int(line))
        return Frame(func, loc, 0)
    return Frame(text, "", 0)


def parse_raw(text: str) -> list[Sample]:
    """py-spy's ``--format raw --threads`` output: ``thread (tid): name;frame;...;frame COUNT``."""
    samples = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread = parts[0] if parts[0].startswith("thread") else ""
        frames = tuple(_frame(p) for p in (parts[1:] if thread else parts))
        samples.append(Sample(thread, frames, int(count)))
    return samples


def _named(frames: tuple[Frame, ...]) -> list[Frame]:
    return [f for f in frames if any(root in f.path for root in LIBS)]


def thread_running(samples: list[Sample], func: str) -> str | None:
    """The thread whose stacks most often contain a frame of ``func`` (e.g. ``run_busy_loop``: the
    engine core's loop). By name is not enough: an engine core forked from the API process's
    ``vllm-loop`` thread keeps that name for its main thread."""
    hits: Counter[str] = Counter()
    for s in samples:
        if any(f.func.endswith(func) for f in s.frames):
            hits[s.thread] += s.count
    return hits.most_common(1)[0][0] if hits else None


def summarise(samples: list[Sample], thread: str | None = None, top: int = 20) -> dict[str, Any]:
    """Shares of the samples of ``thread`` (a substring of the thread field; None: the thread with
    the most samples): ``self`` charges each sample to its innermost vLLM / service frame (time in
    that function or in torch, C or stdlib code it called); ``inclusive`` counts every such
    function once per sample on the stack; ``own`` is this project's inclusive share by file."""
    per_thread: Counter[str] = Counter()
    for s in samples:
        per_thread[s.thread] += s.count
    if not per_thread:
        return {"samples": 0, "threads": {}, "thread": None, "self": [], "inclusive": [], "own": {}, "own_share": 0.0}
    chosen = (next((t for t, _ in per_thread.most_common() if thread in t), None) if thread is not None
              else per_thread.most_common(1)[0][0])
    mine = [s for s in samples if s.thread == chosen]
    total = sum(s.count for s in mine)
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    own_any = 0
    for s in mine:
        named = _named(s.frames)
        self_c[named[-1].label if named else "(outside vllm and service)"] += s.count
        for label in {f.label for f in named}:
            incl[label] += s.count
        own_files = {f.path.split(OWN, 1)[1] for f in named if OWN in f.path}
        for name in own_files:
            own[name] += s.count
        own_any += s.count if own_files else 0

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "threads": dict(per_thread.most_common(8)), "thread": chosen,
            "self": shares(self_c), "inclusive": shares(incl),
            "own": dict(shares(own)), "own_share": round(own_any / total, 4) if total else 0.0}


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds`` (raw, every thread, idle samples kept, full paths)."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
                             str(rate), "--format", "raw", "--threads", "--idle", "--nonblocking", "--full-filenames",
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def gpu_util(out: Path, period_ms: int = 100) -> subprocess.Popen[bytes]:
    """nvidia-smi sampling GPU utilisation (%) every ``period_ms`` into ``out`` until terminated."""
    with out.open("wb") as fh:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 f"-lms={period_ms}"], stdout=fh, stderr=subprocess.DEVNULL)


def mean_util(text: str) -> float | None:
    vals = [float(x) for x in text.split() if x.replace(".", "", 1).isdigit()]
    return round(sum(vals) / len(vals), 1) if vals else None


def markdown_rows(name: str, summ: dict[str, Any], limit: int = 12) -> list[str]:
    """A workload's section: self and inclusive shares side by side."""
    own = ", ".join(f"{k} {100 * v:.1f} %" for k, v in summ["own"].items()) or "—"
    md = [f"### {name}: {summ['samples']} samples of `{summ['thread']}`; this project's code on the stack "
          f"{100 * summ['own_share']:.1f} % ({own})",
          "", "| self (innermost vLLM/service frame) | share | inclusive | share |", "|---|---|---|---|"]
    rows = max(len(summ["self"][:limit]), len(summ["inclusive"][:limit]))
    for i in range(rows):
        a = summ["self"][i] if i < len(summ["self"][:limit]) else ("", None)
        b = summ["inclusive"][i] if i < len(summ["inclusive"][:limit]) else ("", None)
        md.append(f"| `{a[0]}` | {'' if a[1] is None else f'{100 * a[1]:.1f} %'} | `{b[0]}` | "
                  f"{'' if b[1] is None else f'{100 * b[1]:.1f} %'} |")
    return md + [""]
