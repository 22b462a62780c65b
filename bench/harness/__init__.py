"""What every benchmark shares: device label, bootstrap intervals, results files, engines, a server.

The whole API (import from ``bench.harness``):

- ``device_label(device=None)`` / ``device_tag(label)``: "NVIDIA H100 80GB HBM3" or
  "cpu (<CPU model>, N threads)", and the short tag results files are named by ("h100", "cpu").
- ``bootstrap_ci(values, rounds=2000, seed=0, level=0.95)``: seeded percentile interval of a mean.
- ``Provenance.collect(device)`` + ``write_results(out_dir, name, payload, markdown, prov)``:
  ``<out_dir>/<name>_<tag>.json`` and ``.md``, each naming the device, the reproduce command
  (``python -m bench.<script> ...``), the date and the git revision. ``write_files(stem, ...)``
  when the caller picks the file name; ``read_results(path)`` to merge phases into one file.
- ``add_engine_args(parser)``, ``model_path(model)``, ``transformers_engine(...)``,
  ``vllm_engine(model, **settings)`` (vLLM imported only when called), ``free_gpu()``.
- ``ServerProcess(args, port=..., log=...)``: ``alignserve serve`` as a child process;
  ``wait_ready()`` polls /readyz, ``stop()`` sends SIGTERM and reports the exit.

Run benchmarks as modules from the repository root (``python -m bench.cpu_decode``) so that
``bench`` and ``service`` import from this checkout.
"""

from .device import cpu_model_name, device_label, device_tag
from .engines import add_engine_args, free_gpu, model_path, transformers_engine, vllm_engine
from .results import PROVENANCE_KEYS, Provenance, read_results, reproduce_command, write_files, write_results
from .server import ServerProcess, metric_values
from .stats import bootstrap_ci

__all__ = [
    "PROVENANCE_KEYS",
    "Provenance",
    "ServerProcess",
    "add_engine_args",
    "bootstrap_ci",
    "cpu_model_name",
    "device_label",
    "device_tag",
    "free_gpu",
    "metric_values",
    "model_path",
    "read_results",
    "reproduce_command",
    "transformers_engine",
    "vllm_engine",
    "write_files",
    "write_results",
]
