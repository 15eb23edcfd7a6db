"""The root of GearKV's exception tree, and the one error the contract's pure checks raise.

::

    GearKVError                      root of everything GearKV raises on purpose
    ├── InvalidField (+ ValueError)  a value breaks the API contract (gearkv.api.limits, .keys);
    │                                the message names the field and the limit
    ├── gearkv.client.errors.KVStoreError     a store call failed (the SDK's tree)
    └── gearkv.codec.CodecError (+ ValueError) the codec rejected a tensor, config or blob

The SDK and the store each map ``InvalidField`` to their own ``InvalidArgument`` (the SDK's
``gearkv.client.errors.InvalidArgument``, the store's INVALID_ARGUMENT status) with
:func:`raising_as`. Plain exceptions only: this module imports no grpc, protobuf or redis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["GearKVError", "InvalidField", "raising_as"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class GearKVError(Exception):
    """Root of every error GearKV raises on purpose (store calls, the codec, contract checks)."""


class InvalidField(GearKVError, ValueError):
    """A value breaks the API contract; the message names the field and the limit it broke."""


def raising_as(error: Callable[[str], Exception], check: Callable[_P, _R]) -> Callable[_P, _R]:
    """``check`` with its ``InvalidField`` raised as ``error(message)`` instead (same message).

    Example::

        check_key = raising_as(InvalidArgument, limits.check_key)  # the SDK's own error class
    """

    @functools.wraps(check)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return check(*args, **kwargs)
        except InvalidField as err:
            raise error(str(err)) from err

    return wrapper
