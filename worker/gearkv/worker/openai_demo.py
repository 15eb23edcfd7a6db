"""`gearkv demo --openai`: the demo's conversation driven by the official ``openai`` package.

Every turn re-sends the whole conversation to ``/v1/chat/completions`` (as every OpenAI client does),
streamed, to a *fresh* worker's HTTP API (``gearkv worker --http-port``; an empty hot cache, a new
port), so the earlier turns' KV can only come from the store, found by the prompt's token ids alone:
no session id anywhere. Each turn prints the figures the API returns (``gearkv`` in the last chunk:
tokens reused, prefilled, outcome) and the time to first token measured by the client, against a cold
prefill of the same conversation on the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

from gearkv.worker.demo import build_script, default_text_path, demo_calibration, load_passages

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Play the conversation through the HTTP API (the demo's flags); returns the exit code."""
    try:
        import openai
    except ImportError:
        print("gearkv demo --openai needs the openai package: pip install openai", file=sys.stderr)
        return 2
    import torch
    from gearkv.client import KVStoreClient
    from gearkv.codec import CalibrationError
    from gearkv.store.local import LocalRedis, LocalStore
    from gearkv.worker.codec_setup import worker_codec
    from gearkv.worker.config import SessionOptions
    from gearkv.worker.engine import Engine, SamplingParams
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.metrics import WorkerMetrics
    from gearkv.worker.model import load_model
    from gearkv.worker.openai_api import HttpApi
    from gearkv.worker.sessions import Worker
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 110)
    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    script = build_script(load_passages(args.text or default_text_path()), args.turns)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        with console.status("starting redis-server and the store..."):
            redis_url = args.redis_url or stack.enter_context(LocalRedis()).url
            store = stack.enter_context(LocalStore(redis_url, in_process=args.store_in_process))
        with console.status("loading the model...") as status:
            loaded = load_model(args.model, args.gguf_file, args.device, args.dtype)
            fingerprint = model_fingerprint(loaded)
            try:
                calibration = demo_calibration(args, loaded, fingerprint, status, console)
            except CalibrationError as exc:
                console.print(f"[red]{exc}[/red]")
                return 2
            status.update("warming up the model...")
            engine = Engine(loaded)
            engine.warmup()
            try:  # the checks every fresh worker makes: refused here once, clearly
                worker_codec(args.codec, calibration, fingerprint=fingerprint, kv_layers=engine.kv_layers)
            except CalibrationError as exc:
                console.print(f"[red]{exc}[/red]")
                return 2
        console.print(f"[bold]store[/] {store.address} · [bold]model[/] {loaded.name} · codec {args.codec}")
        store_client = KVStoreClient(store.address, token=store.token)
        stack.callback(store_client.close)
        options = SessionOptions(codec=args.codec, chunk_size=args.chunk_size, hot_cache_bytes=0)
        messages: list[Any] = []  # openai's message params are TypedDicts: plain dicts here
        for number, message in enumerate(script, 1):
            worker = Worker(
                engine,
                store_client,
                options,
                WorkerMetrics(),
                fingerprint=fingerprint,
                calibration=calibration,
            )
            api = HttpApi(push_wait_s=30)
            api.attach(worker)
            api.start()
            base_url = f"http://{api.address}/v1"
            console.rule(f"turn {number}/{len(script)} · fresh worker · openai.OpenAI(base_url={base_url!r})")
            shown = message if len(message) < 240 else f"{message[:110]}\n  [...]\n{message[-110:]}"
            console.print(Text("user: ", style="bold cyan") + Text(shown))
            messages.append({"role": "user", "content": message})
            client = openai.OpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=1800)
            answer, figures, ttft, completion_tokens = "", {}, 0.0, 0
            t0 = time.perf_counter()
            try:
                stream = client.chat.completions.create(
                    model=loaded.name,
                    messages=messages,
                    max_tokens=args.max_new_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                console.print(Text("assistant: ", style="bold green"), end="")
                for chunk in stream:
                    delta = chunk.choices[0].delta.content if chunk.choices else None
                    if delta:
                        ttft = ttft or time.perf_counter() - t0
                        answer += delta
                        console.print(delta, end="", markup=False, highlight=False)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        figures = dict((chunk.model_extra or {}).get("gearkv", {}))
                    if chunk.usage is not None:
                        completion_tokens = chunk.usage.completion_tokens
                console.line()
            finally:
                client.close()
                api.stop(1)
                worker.close(30)
            messages.append({"role": "assistant", "content": answer})
            cold = 0.0
            if not args.no_cold:
                prompt = engine.encode_chat(messages[:-1])
                tc = time.perf_counter()
                gen = engine.generate(prompt, SamplingParams(max_new_tokens=1))
                gen.run()
                cold = gen.first_token_at - tc
            row = {
                "turn": number,
                "prompt_tokens": figures.get("prompt_tokens", 0),
                "tokens_reused": figures.get("tokens_reused", 0),
                "tokens_prefilled": figures.get("tokens_prefilled", 0),
                "completion_tokens": completion_tokens,
                "outcome": figures.get("outcome", ""),
                "reason": figures.get("reason", ""),
                "ttft_client_s": round(ttft, 4),
                "ttft_cold_s": round(cold, 4),
                "answer": answer,
            }
            rows.append(row)
            console.print(
                f"[bold]{row['outcome']}[/]{' (' + row['reason'] + ')' if row['reason'] else ''}: "
                f"{row['tokens_reused']} of {row['prompt_tokens']} prompt tokens reused, "
                f"{row['tokens_prefilled']} prefilled · TTFT {ttft:.2f} s"
                + (f" vs {cold:.2f} s cold" if cold else "")
            )
        table = Table(title=f"GearKV demo over the OpenAI API: {loaded.name}, chunk {args.chunk_size} tokens")
        for col in ("turn", "prompt", "reused", "prefill", "reuse of prev.", "outcome", "TTFT", "cold"):
            table.add_column(col, justify="right", no_wrap=True)
        for prev, r in zip([None, *rows], rows, strict=False):
            # the previous turn's KV: its prompt and answer (the last answer token was never fed)
            context = prev["prompt_tokens"] + prev["completion_tokens"] - 1 if prev else 0
            table.add_row(
                str(r["turn"]),
                str(r["prompt_tokens"]),
                str(r["tokens_reused"]),
                str(r["tokens_prefilled"]),
                f"{r['tokens_reused'] / context:.0%}" if context else "-",
                r["outcome"],
                f"{r['ttft_client_s']:.2f}s",
                f"{r['ttft_cold_s']:.2f}s" if r["ttft_cold_s"] else "-",
            )
        console.print(table)
        if args.json is not None:
            doc = {"model": loaded.name, "api": "openai", "codec": args.codec, "chunk_size": args.chunk_size}
            doc["codec_calibration"] = calibration.digest if calibration is not None else None
            args.json.write_text(json.dumps(doc | {"turns": rows}, indent=2) + "\n")
            console.print(f"wrote {args.json}")
    return 0
