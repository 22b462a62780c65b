"""``python -m tests.dying_server``: alignserve's real server loop (``service.api.http_server.serve``)
on ``CoreProcessEngine``, whose engine-core child process a test can SIGKILL (its pid is written to
``<home>/core.pid``). Used by tests/test_engine_death.py to check that the process exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.api.app import create_app
from service.api.http_server import serve
from service.config import Settings
from service.engines.transformers.engine import TransformersEngine
from service.logging_setup import configure_logging
from service.scheduling.health import EngineHealth

from .fake_engines import CoreProcessEngine


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--drain-timeout", type=float, default=2.0)
    args = p.parse_args()
    settings = Settings(model=args.model, home=args.home, port=args.port, device="cpu", dtype="float32",
                        max_model_len=256, max_tokens_limit=400, reward_model="none", log_format="json")

    def engine_factory(s: Settings) -> CoreProcessEngine:
        inner = TransformersEngine(s.model, device="cpu", dtype="float32", max_model_len=s.max_model_len)
        engine = CoreProcessEngine(inner, token_s=0.05)
        (args.home / "core.pid").write_text(str(engine.core.pid))
        return engine

    configure_logging(settings.log_level, settings.log_format)
    health = EngineHealth()
    app = create_app(settings, engine_factory=engine_factory, drain_s=args.drain_timeout,  # type: ignore[arg-type]
                     health=health)
    return serve(app, settings, health, args.drain_timeout)


if __name__ == "__main__":
    sys.exit(main())
