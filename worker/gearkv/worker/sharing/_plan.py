"""The sharing plan: which layers reuse which owner's KV, for which model, and how good that measured.

A plan file is JSON::

    {"format": "gearkv-sharing-plan", "version": 1, "model": "SmolLM2-135M-Instruct",
     "fingerprint": "SmolLM2-135M-Instruct:1f0c...", "num_layers": 30,
     "shared": {"21": 3, "27": 3}, "thresholds": {...}, "quality": {...}}

``shared`` maps each shared layer to its final owner (chains resolved: an owner is never shared
itself, and always an earlier layer). The plan belongs to one model fingerprint: a worker refuses a
plan made for another model, and stored KV is namespaced by the fingerprint plus the plan's
:attr:`SharingPlan.digest`, so KV written under one map is never read under another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SHARING_ATTRIBUTE",
    "SharingPlan",
    "SharingPlanError",
    "SharingPlanMismatch",
    "SharingQuality",
    "SharingThresholds",
    "base_fingerprint",
    "load_plan",
    "resolve_owner",
    "save_plan",
    "sharing_fingerprint",
]

FORMAT = "gearkv-sharing-plan"
FORMAT_VERSION = 1
SHARE_TAG = ":share-"
# The manifest attribute naming the plan a session's KV was made with (absent without one).
SHARING_ATTRIBUTE = "sharing_plan"


class SharingPlanError(ValueError):
    """A plan file that cannot be used: unreadable, another format or version, or an invalid map."""


class SharingPlanMismatch(SharingPlanError):
    """The plan was calibrated for another model (its fingerprint differs)."""


@dataclass(frozen=True)
class SharingThresholds:
    """The calibration's limits: what a share had to keep to be accepted."""

    max_shared: int = 4
    cos_threshold: float = 0.95
    max_ppl_ratio: float | None = 1.1
    min_top1_agreement: float | None = None
    max_candidates: int = 40
    time_budget_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_shared < 0:
            raise ValueError("max_shared must be >= 0")
        if not -1.0 <= self.cos_threshold <= 1.0:
            raise ValueError("cos_threshold must be in [-1, 1]")
        if self.max_ppl_ratio is not None and not (
            math.isfinite(self.max_ppl_ratio) and self.max_ppl_ratio >= 1.0
        ):
            raise ValueError("max_ppl_ratio must be a finite number >= 1 (1.1 = at most 10% worse)")
        if self.min_top1_agreement is not None and not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ValueError("min_top1_agreement must be in [0, 1]")
        if self.max_candidates < 0:
            raise ValueError("max_candidates must be >= 0")
        if not self.time_budget_s > 0:
            raise ValueError("time_budget_s must be > 0")


@dataclass(frozen=True)
class SharingQuality:
    """What the calibration measured for the plan's map (on held-out text, against no sharing).

    ``ppl_ratio`` is the map's perplexity over the unshared model's; ``top1_agreement`` the share of
    held-out positions whose most likely next token is unchanged; ``cosine`` the mean cosine
    similarity of the final hidden states on the calibration passages.
    """

    ppl_base: float = 0.0
    ppl: float = 0.0
    ppl_ratio: float = 1.0
    top1_agreement: float = 1.0
    cosine: float = 1.0
    held_out_tokens: int = 0
    calibration_passages: int = 0
    passage_tokens: int = 0
    candidates_evaluated: int = 0
    elapsed_s: float = 0.0
    stopped: str = ""  # why the search ended: target, pairs_exhausted, max_candidates, time_budget


@dataclass(frozen=True)
class SharingPlan:
    """A layer -> owner map for one model, with the limits it was chosen under and its measured quality.

    An empty map is a valid plan: "nothing is safe to share" (the model runs as without a plan, and
    stores KV under the same namespace).

    Raises:
        SharingPlanError: an owner not earlier than its layer, a shared owner, a layer out of range.
    """

    fingerprint: str
    num_layers: int
    shared: tuple[tuple[int, int], ...] = ()
    model: str = ""
    thresholds: SharingThresholds = field(default_factory=SharingThresholds)
    quality: SharingQuality = field(default_factory=SharingQuality)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            raise SharingPlanError("the plan has no model fingerprint")
        if self.num_layers < 1:
            raise SharingPlanError(f"num_layers must be >= 1, got {self.num_layers}")
        pairs = tuple(sorted((int(a), int(b)) for a, b in self.shared))
        object.__setattr__(self, "shared", pairs)
        layers = [a for a, _ in pairs]
        if len(set(layers)) != len(layers):
            raise SharingPlanError("a layer appears twice in the map")
        for layer, owner in pairs:
            if not 0 <= owner < layer < self.num_layers:
                raise SharingPlanError(
                    f"layer {layer} -> owner {owner}: an owner must be an earlier layer, both in "
                    f"0..{self.num_layers - 1}"
                )
            if owner in layers:
                raise SharingPlanError(
                    f"layer {layer}'s owner {owner} is itself shared: chains must be resolved to the "
                    "final owner"
                )

    @property
    def owners(self) -> dict[int, int]:
        """Shared layer -> owner layer."""
        return dict(self.shared)

    @property
    def shared_layers(self) -> int:
        return len(self.shared)

    @property
    def kv_layers(self) -> int:
        """Layers whose KV is computed, cached and stored (the owners)."""
        return self.num_layers - len(self.shared)

    @property
    def digest(self) -> str:
        """12 hex digits naming the map (``""`` for an empty one): equal maps, equal KV."""
        if not self.shared:
            return ""
        canon = json.dumps([self.num_layers, self.shared], separators=(",", ":"))
        return hashlib.blake2b(canon.encode(), digest_size=6).hexdigest()

    def check_model(self, fingerprint: str) -> None:
        """Raise :class:`SharingPlanMismatch` unless the plan was made for ``fingerprint``."""
        if fingerprint != self.fingerprint:
            raise SharingPlanMismatch(
                f"the sharing plan was calibrated for model {self.fingerprint!r}, this model is "
                f"{fingerprint!r}: run `gearkv calibrate-sharing` for this model"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "num_layers": self.num_layers,
            "shared": {str(a): b for a, b in self.shared},
            "digest": self.digest,
            "thresholds": asdict(self.thresholds),
            "quality": asdict(self.quality),
        }

    @classmethod
    def from_json(cls, data: Any) -> SharingPlan:
        """Parse and validate a plan (the dict of :meth:`to_json`).

        Raises:
            SharingPlanError: another format, an unsupported version, missing or ill-typed fields.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SharingPlanError(f"not a sharing plan (expected a JSON object with format {FORMAT!r})")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise SharingPlanError(
                f"sharing plan format version {version!r} is not supported (this GearKV reads "
                f"version {FORMAT_VERSION})"
            )
        try:
            shared = data.get("shared", {})
            if not isinstance(shared, dict):
                raise TypeError("shared must be an object of layer -> owner")
            pairs = tuple((_int(k, "layer"), _int(v, "owner")) for k, v in shared.items())
            plan = cls(
                fingerprint=_str(data.get("fingerprint"), "fingerprint"),
                num_layers=_int(data.get("num_layers"), "num_layers"),
                shared=pairs,
                model=_str(data.get("model", ""), "model", empty=True),
                thresholds=_sub(SharingThresholds, data.get("thresholds", {}), "thresholds"),
                quality=_sub(SharingQuality, data.get("quality", {}), "quality"),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SharingPlanError):
                raise
            raise SharingPlanError(f"invalid sharing plan: {exc}") from exc
        digest = data.get("digest")
        if digest is not None and digest != plan.digest:
            raise SharingPlanError(
                f"the plan's digest {digest!r} does not match its map ({plan.digest!r}): edited by hand?"
            )
        return plan


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    return value


def _str(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _sub(kind: Any, value: Any, what: str) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be an object")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise TypeError(f"{what} has unknown fields {unknown}")
    return kind(**value)


def load_plan(path: str | os.PathLike[str]) -> SharingPlan:
    """Read a plan file.

    Raises:
        SharingPlanError: the file is missing, not JSON, or not a valid plan (the message names the file).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SharingPlanError(f"cannot read sharing plan {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SharingPlanError(f"sharing plan {str(path)!r} is not JSON: {exc}") from exc
    try:
        return SharingPlan.from_json(data)
    except SharingPlanError as exc:
        raise SharingPlanError(f"sharing plan {str(path)!r}: {exc}") from exc


def save_plan(plan: SharingPlan, path: str | os.PathLike[str]) -> None:
    """Write a plan file atomically (a reader never sees half a plan)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".plan-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(plan.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sharing_fingerprint(fingerprint: str, plan: SharingPlan | None) -> str:
    """The namespace fingerprint of a model run with ``plan``: ``<fingerprint>:share-<digest>``.

    Without a plan, or with an empty one, the model's own fingerprint (the KV is the same).
    """
    if plan is None or not plan.digest:
        return fingerprint
    return f"{fingerprint}{SHARE_TAG}{plan.digest}"


def base_fingerprint(fingerprint: str) -> str:
    """The model part of a namespace fingerprint (without a ``:share-`` suffix)."""
    head, tag, _ = fingerprint.rpartition(SHARE_TAG)
    return head if tag else fingerprint


def resolve_owner(owners: Mapping[int, int], layer: int) -> int:
    """The final owner of ``layer`` following ``owners`` (``layer`` itself when it is not shared)."""
    seen = set()
    while layer in owners:
        if layer in seen:  # pragma: no cover - maps only point to earlier layers
            raise SharingPlanError(f"sharing map has a cycle through layer {layer}")
        seen.add(layer)
        layer = owners[layer]
    return layer
