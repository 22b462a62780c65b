"""vLLM's own benchmark request functions (``vllm bench serve --backend openai`` / ``openai-chat``)
against a real alignserve process, where vLLM is installed (the GPU host; skipped elsewhere).

The module is loaded from the installed package's file without importing ``vllm`` itself, so a
CPU-only machine with the wheel installed ``--no-deps`` runs it too.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .server_proc import start_server

pytestmark = pytest.mark.slow


def _request_funcs() -> ModuleType:
    pytest.importorskip("aiohttp")
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "benchmarks" / "lib" / "endpoint_request_func.py"
    if not path.is_file():
        pytest.skip(f"no {path}")
    mod_spec = importlib.util.spec_from_file_location("vllm_endpoint_request_func", path)
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_vllm_bench_request_functions_succeed(tmp_path: Path, tiny_model_dir: Path) -> None:
    erf = _request_funcs()  # skips first where aiohttp or vLLM is missing
    import aiohttp
    srv = start_server(tmp_path, tiny_model_dir, extra=["--served-model-name", "bench-model"])

    async def run() -> list[Any]:
        outs = []
        async with aiohttp.ClientSession(timeout=erf.AIOHTTP_TIMEOUT) as session:
            for fn, endpoint in ((erf.async_request_openai_completions, "/v1/completions"),
                                 (erf.async_request_openai_chat_completions, "/v1/chat/completions")):
                for extra in ({"temperature": 0.0},
                              {"vllm_xargs": {"alignserve_profile": '{"principle": "Be brief."}'}}):
                    inp = erf.RequestFuncInput(prompt="hello world the quick brown fox", api_url=srv.base + endpoint,
                                               prompt_len=7, output_len=20, model="bench-model", ignore_eos=True,
                                               extra_body=extra)
                    outs += await asyncio.gather(*[fn(inp, session) for _ in range(3)])
        return outs

    try:
        outs = asyncio.run(run())
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)
    assert len(outs) == 12
    for out in outs:
        assert out.success and out.error == "", out.error
        assert out.output_tokens == 20 and out.ttft > 0 and out.generated_text and out.prompt_len > 7
