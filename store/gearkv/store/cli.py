"""`gearkv store`: flags and GEARKV_* environment variables -> StoreConfig -> serve().

Every flag has an environment variable (the flag wins); both, the help and the default are declared once,
on StoreConfig's fields (:mod:`gearkv.api.options`); ``--help`` is generated from them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gearkv.api.options import add_dataclass_options, build
from gearkv.store.auth import parse_tenants
from gearkv.store.config import StoreConfig

log = logging.getLogger("gearkv.store")
_TRUE = {"1", "true", "yes", "on"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def build_parser(prog: str, env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The flags; GEARKV_* variables are read by :func:`config_from_args` (``env`` is kept for callers)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the GearKV KV store over gRPC, backed by Redis or Redis Cluster.",
        epilog=(
            "Tenants and tokens: --tokens-file FILE or GEARKV_TOKENS hold a JSON object "
            '{"tenant": {"token_sha256": "<hex>", "quota_bytes": N}} (or {"token": "..."}, hashed at load; '
            "quota_bytes in bytes, 0 = no quota); "
            "GEARKV_TOKENS also takes name=token,name=token. --no-auth serves one tenant 'default' "
            "without tokens (local demos only); with no tokens at all the store does the same, but only "
            "when bound to a loopback host."
        ),
    )
    add_dataclass_options(parser, StoreConfig)
    parser.add_argument(
        "--tokens-file",
        default=None,
        help="tenant tokens (JSON, see below) [env GEARKV_TOKENS_FILE; default not set]",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="no tokens: every caller is tenant 'default' [env GEARKV_NO_AUTH; default off]",
    )
    return parser


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> StoreConfig:
    """Merge flags over GEARKV_* variables over defaults; tenants from --tokens-file or GEARKV_TOKENS.

    Raises ValueError naming the bad setting (main turns it into exit status 2).
    """
    no_auth = _no_auth(args, env)
    tokens_file = args.tokens_file or env.get("GEARKV_TOKENS_FILE")
    tenants: tuple[Any, ...] = ()
    if tokens_file:
        try:
            text = Path(tokens_file).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read tokens file {tokens_file}: {exc.strerror}") from None
        tenants = parse_tenants(text)
    elif env.get("GEARKV_TOKENS"):
        tenants = parse_tenants(env["GEARKV_TOKENS"])
    if no_auth or tenants:
        return build(StoreConfig, args, env, auth=not no_auth, tenants=tenants)
    cfg = build(StoreConfig, args, env, auth=False, tenants=())
    if cfg.host not in _LOOPBACK:
        raise ValueError(
            f"no tenant tokens configured and --host {cfg.host} is not loopback: give --tokens-file or "
            "GEARKV_TOKENS (or --no-auth to serve without authentication on purpose)"
        )
    return cfg  # loopback only: the local demo works with no setup (main says so in its log)


def _no_auth(args: argparse.Namespace, env: Mapping[str, str]) -> bool:
    return bool(args.no_auth) or env.get("GEARKV_NO_AUTH", "").lower() in _TRUE


def auth_notice(cfg: StoreConfig, no_auth_asked: bool) -> str | None:
    """The start-up warning when the store serves without authentication (None when auth is on)."""
    if cfg.auth:
        return None
    if no_auth_asked:
        return "serving tenant 'default' WITHOUT authentication (--no-auth): every caller is that tenant"
    return (
        "no tenant tokens configured: serving tenant 'default' WITHOUT authentication "
        f"(allowed on loopback host {cfg.host} only)"
    )


def main(argv: Sequence[str] | None = None, prog: str = "gearkv store") -> int:
    env = os.environ
    args = build_parser(prog, env).parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_from_args(args, env)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    notice = auth_notice(cfg, _no_auth(args, env))
    if notice is not None:
        log.warning("%s", notice)
    from gearkv.store.tuning import keep_freed_memory

    keep_freed_memory()
    return asyncio.run(serve_cfg(cfg))


async def serve_cfg(cfg: StoreConfig) -> int:
    from gearkv.store.server import serve

    return await serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
