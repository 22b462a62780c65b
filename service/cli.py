"""``alignserve``: serve the API, run one aligned generation, or provision models.

Every flag can also be set by environment variable (``ALIGNSERVE_<NAME>``); flags win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import EMBEDDED_MODEL, Settings

_MODEL_SETTINGS = ("model", "backend", "device", "dtype", "home", "db_url", "max_model_len", "log_level")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"'{EMBEDDED_MODEL}' (default), a local HF folder, or a hub id")
    g.add_argument("--backend", choices=["transformers", "vllm"],
                   help="engine backend: transformers (default; CPU or GPU) or vllm (GPU; vllm==0.26.0 installed)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "float64"],
                   help="compute dtype (auto: float32 on CPU, bfloat16 on GPU)")
    g.add_argument("--home", type=Path, help="model cache and default DB folder (default ~/.cache/alignserve)")
    g.add_argument("--max-model-len", type=int, help="max prompt+completion tokens per stream (default 4096)")
    g.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    overrides = {k: getattr(args, k) for k in _MODEL_SETTINGS if getattr(args, k, None) is not None}
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from .api.app import create_app
    from .api.http_server import serve
    from .logging_setup import configure_logging
    from .scheduling.health import EngineHealth

    settings = _settings(args, {
        "host": args.host, "port": args.port, "max_batch_size": args.max_batch_size,
        "max_queue": args.max_queue, "max_num_seqs": args.max_num_seqs,
        "compile_concurrency": args.compile_concurrency, "vllm_pairing": args.vllm_pairing,
        "gpu_memory_utilization": args.gpu_memory_utilization, "kv_cache_blocks": args.kv_cache_blocks,
        "request_timeout_s": args.request_timeout,
        "log_format": args.log_format, "reward_model": args.reward_model,
        "reward_gpu_memory_utilization": args.reward_gpu_memory_utilization,
        "reward_load_attempts": args.reward_load_attempts,
        "served_model_name": args.served_model_name,
        "header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout,
        "keep_alive_s": args.keep_alive_timeout, "max_header_bytes": args.max_header_bytes,
        "max_connections": args.max_connections, "event_loop": args.loop, "http": args.http,
    })
    configure_logging(settings.log_level, settings.log_format)
    health = EngineHealth()
    app = create_app(settings, drain_s=args.drain_timeout, health=health)
    return serve(app, settings, health, args.drain_timeout)


def cmd_generate(args: argparse.Namespace) -> int:
    import logging

    from .alignment.linear_alignment import LinearAlignmentConfig
    from .alignment.sampling import SamplingParams
    from .alignment.spec import AlignmentSpec
    from .engines.base import GenerationRequest, TokenEvent
    from .engines.factory import build_engine
    from .logging_setup import configure_logging

    settings = _settings(args)
    configure_logging("WARNING" if args.log_level is None else args.log_level, "text")
    logging.getLogger("service").setLevel(logging.INFO)
    engine = build_engine(settings)
    la = None
    if args.principle:
        la = LinearAlignmentConfig(principle=args.principle, strength=args.strength, adaptive=args.adaptive,
                                   kl_budget=args.kl_budget)

    def show(ev: TokenEvent) -> None:
        sys.stdout.write(ev.text)
        sys.stdout.flush()

    req = GenerationRequest(
        "cli", [{"role": "user", "content": args.prompt}],
        SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed),
        AlignmentSpec(la=la), on_token=None if args.json else show,
    )
    [res] = engine.generate([req])
    if args.json:
        print(json.dumps({"text": res.text, "finish_reason": res.finish_reason,
                          "completion_tokens": res.completion_tokens, "mean_strength": res.mean_strength},
                         ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        strength = f", mean strength {res.mean_strength:.2f}" if res.mean_strength is not None else ""
        print(f"[{res.completion_tokens} tokens, {res.finish_reason}, {res.total_s:.1f}s{strength}]",
              file=sys.stderr)
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from .models.provision import EMBEDDED_MODELS, ProvisionError, pull

    settings = _settings(args)
    names = list(EMBEDDED_MODELS) if args.name is None else [args.name]
    try:
        for name in names:
            path = pull(name, settings.home, progress=lambda m: print(m, file=sys.stderr, flush=True))
            print(path)
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from .models.provision import EMBEDDED_MODELS, embedded_dir

    settings = _settings(args)
    for m in EMBEDDED_MODELS.values():
        ready = (embedded_dir(settings.home, m) / "hf" / "alignserve-source.json").is_file()
        print(f"embedded:{m.name}\t{'pulled' if ready else 'not pulled'}\t{m.description}")
    return 0


def _key_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .store.api_keys import ApiKeyStore
    from .store.profiles import ProfileStore

    return ApiKeyStore(ProfileStore(_settings(args, {"db_url": args.db_url}).resolved_db_url()).engine)


def cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        token, key = _key_store(args).create(args.name, [s.strip() for s in args.scopes.split(",") if s.strip()])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created key {key.key_id} ({args.name}) with scopes {','.join(sorted(key.scopes))}", file=sys.stderr)
    print("the token is shown once; store it now:", file=sys.stderr)
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    for k in _key_store(args).all():
        print(f"{k.key_id}\t{k.name}\t{','.join(sorted(k.scopes))}\t{'revoked' if k.revoked else 'active'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not _key_store(args).revoke(args.key_id):
        print(f"error: no key {args.key_id}", file=sys.stderr)
        return 2
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignserve",
        description="Inference-time alignment server: Linear Alignment per request, reward scoring, "
        "versioned preference profiles. Flags override ALIGNSERVE_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API", description="Run the HTTP API (FastAPI + uvicorn). "
                           "The model loads in the background; /readyz turns 200 when it is ready. If the "
                           "engine dies, its requests fail with 503, /readyz turns 503 and the process exits "
                           "with status 70 after draining, for its supervisor to restart it.")
    _add_model_flags(serve)
    serve.add_argument("--served-model-name",
                       help="model id for /v1 clients (the 'model' field); default: a short name from --model, "
                       "e.g. 'qwen2.5-coder-0.5b-instruct' for the embedded model, a folder's last component")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--db-url", help="profile DB: SQLAlchemy URL (default sqlite:///<home>/profiles.db; "
                       "postgresql+psycopg://user:pw@host/db works)")
    serve.add_argument("--max-batch-size", type=int,
                       help="transformers backend: requests decoded together as one batch (default 8)")
    serve.add_argument("--max-queue", type=int, help="waiting requests before 429 (default 64)")
    serve.add_argument("--max-num-seqs", type=int,
                       help="vllm backend: requests in continuous batching at once (default 256)")
    serve.add_argument("--vllm-pairing", choices=["sync", "async", "off"],
                       help="vllm backend: Linear-Alignment pairs under vLLM's async scheduling (async, default), "
                       "with synchronous scheduling for the whole engine (sync), or no LA (off: LA requests "
                       "are refused)")
    serve.add_argument("--compile-concurrency", type=int,
                       help="vllm backend: vLLM requests a profile compile keeps in flight, 0 = no bound "
                       "(default 32); lower leaves more of the engine to live traffic while a profile compiles")
    serve.add_argument("--gpu-memory-utilization", type=float,
                       help="vllm backend: share of GPU memory for weights and KV cache (default 0.85)")
    serve.add_argument("--kv-cache-blocks", type=int,
                       help="vllm backend: KV-cache blocks of 16 tokens instead of what "
                       "--gpu-memory-utilization leaves (at least one --max-model-len sequence must fit)")
    serve.add_argument("--reward-model",
                       help="English RM for /score method 'reward_model': auto (default: the shipped head when "
                       "serving the embedded model), none, embedded, or a folder/hub id of an HF "
                       "sequence-classification RM with one label")
    serve.add_argument("--reward-gpu-memory-utilization", type=float,
                       help="vllm backend: the reward model's share of GPU memory (default 0.1)")
    serve.add_argument("--reward-load-attempts", type=int,
                       help="tries to load the reward model, 10 s apart, before /score reward_model answers 503 "
                       "(default 3: vLLM's start-up memory check fails if other GPU tenants change their use)")
    serve.add_argument("--request-timeout", type=float, help="seconds per request before 504 (default 300)")
    serve.add_argument("--drain-timeout", type=float, default=30.0,
                       help="seconds to finish work on SIGTERM or after the engine died (default 30)")
    serve.add_argument("--http", choices=["auto", "httptools", "h11"],
                       help="the HTTP/1.1 parser: auto (default: httptools when installed), httptools, h11")
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"],
                       help="the server's event loop: auto (default: uvloop when installed), uvloop, asyncio")
    conn = serve.add_argument_group("slow or hostile clients")
    conn.add_argument("--header-timeout", type=float,
                      help="seconds a connection may take to send a request's headers, from connecting or "
                      "from the end of its previous response; then 408 (default 10)")
    conn.add_argument("--body-timeout", type=float,
                      help="seconds from a request's headers to the end of its body; then 408 (default 30)")
    conn.add_argument("--keep-alive-timeout", type=int,
                      help="seconds an idle keep-alive connection stays open (default 5)")
    conn.add_argument("--max-header-bytes", type=int,
                      help="request line plus headers; larger gets 431 (default 16384)")
    conn.add_argument("--max-connections", type=int,
                      help="open connections; a request on any connection beyond gets 503 (default 1024)")
    serve.add_argument("--log-format", choices=["json", "text"], help="structured JSON lines (default) or text")
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="one aligned generation, printed as it decodes",
                         description="Load the model in-process and generate one answer, optionally with "
                         "Linear Alignment toward a principle.")
    _add_model_flags(gen)
    gen.add_argument("prompt", help="the user message")
    gen.add_argument("--principle", help="preference principle, e.g. 'Answer in one short sentence.'")
    gen.add_argument("--strength", type=float, default=3.0, help="LA ratio r (default 3; 0 = principle prompt)")
    gen.add_argument("--adaptive", action="store_true", help="per-token strength from a KL budget")
    gen.add_argument("--kl-budget", type=float, default=0.1, help="adaptive: nats per token (default 0.1)")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    gen.set_defaults(func=cmd_generate)

    models = sub.add_parser("models", help="provision models", description="Provision embedded models.")
    msub = models.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="fetch, verify and convert an embedded model (no-op when done)")
    pull.add_argument("name", nargs="?", help="embedded model name (default: all)")
    pull.add_argument("--home", type=Path, help="cache folder (default ~/.cache/alignserve)")
    pull.set_defaults(func=cmd_models_pull)
    lst = msub.add_parser("list", help="list embedded models and whether they are pulled")
    lst.add_argument("--home", type=Path)
    lst.set_defaults(func=cmd_models_list)

    keys = sub.add_parser("keys", help="manage API keys", description="Manage API keys (stored hashed in the "
                          "profile DB). Keys are enforced when the server runs with ALIGNSERVE_REQUIRE_API_KEY=true.")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    for name, helptext, func in (("create", "create a key and print its token once", cmd_keys_create),
                                 ("list", "list keys (never their tokens)", cmd_keys_list),
                                 ("revoke", "revoke a key by id", cmd_keys_revoke)):
        kp = ksub.add_parser(name, help=helptext)
        kp.add_argument("--home", type=Path)
        kp.add_argument("--db-url", help="profile DB URL (default sqlite:///<home>/profiles.db)")
        if name == "create":
            kp.add_argument("name", help="a label for the key's owner")
            kp.add_argument("--scopes", default="generate,score,read",
                            help="comma-separated: read, score, generate, admin (default generate,score,read)")
        if name == "revoke":
            kp.add_argument("key_id")
        kp.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
