"""`gearkv worker`: flags and GEARKV_* environment variables -> WorkerConfig -> serve().

Every flag has an environment variable (the flag wins); both, the help and the default are declared once,
on WorkerConfig's and SessionOptions' fields (:mod:`gearkv.api.options`); ``--help`` is generated from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from gearkv.api.options import add_dataclass_options, build
from gearkv.api.units import parse_size
from gearkv.cli import HelpFormatter
from gearkv.worker.api_keys import load_api_keys
from gearkv.worker.config import WorkerConfig

__all__ = ["config_from_args", "main", "parse_size"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the GearKV inference worker: chat sessions resumed from the KV store.",
        formatter_class=HelpFormatter,
    )
    add_dataclass_options(parser, WorkerConfig)
    return parser


def config_from_args(
    argv: Sequence[str], prog: str = "gearkv worker", env: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Parse flags (over ``env``, default ``os.environ``); exits with status 2 on bad input."""
    parser = _parser(prog)
    args = parser.parse_args(list(argv))
    try:
        environ = os.environ if env is None else env
        cfg = build(WorkerConfig, args, environ)
        api_keys = load_api_keys(cfg.api_keys_file, environ)
        if api_keys:
            cfg = dataclasses.replace(cfg, api_keys=api_keys)
        from gearkv.codec import PRESETS

        if cfg.session.codec not in PRESETS:
            raise ValueError(f"codec must be one of {sorted(PRESETS)}")
        from gearkv.worker.codec_setup import missing_calibration, needs_calibration

        if needs_calibration(cfg.session.codec) and not cfg.session.codec_calibration:
            raise ValueError(str(missing_calibration(cfg.session.codec)))
        return cfg
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")


def main(argv: Sequence[str], prog: str = "gearkv worker") -> int:
    cfg = config_from_args(argv, prog)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gearkv.worker.app import serve

    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
