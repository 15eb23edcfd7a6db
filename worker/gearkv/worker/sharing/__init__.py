"""KVSharer: layer-wise KV sharing for the worker (plans, calibration, applying a plan).

A :class:`SharingPlan` maps shared layers to owner layers for one model; :func:`calibrate_sharing`
chooses one with the KVSharer search guarded on held-out text; :func:`apply_plan` runs a model with
it (through :func:`gearkv.worker.hf_cache.share_kv`, the one place that knows transformers' attention).
"""

from __future__ import annotations

from typing import Any

from gearkv.worker import hf_cache
from gearkv.worker.sharing._calibrate import (
    CalibrationEvent,
    SharingEvaluator,
    calibrate_sharing,
    layer_distances,
    random_owners,
    ranked_pairs,
    tentative,
    with_share,
)
from gearkv.worker.sharing._plan import (
    FORMAT,
    FORMAT_VERSION,
    SHARING_ATTRIBUTE,
    SharingPlan,
    SharingPlanError,
    SharingPlanMismatch,
    SharingQuality,
    SharingThresholds,
    base_fingerprint,
    load_plan,
    resolve_owner,
    save_plan,
    sharing_fingerprint,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SHARING_ATTRIBUTE",
    "CalibrationEvent",
    "SharingEvaluator",
    "SharingPlan",
    "SharingPlanError",
    "SharingPlanMismatch",
    "SharingQuality",
    "SharingThresholds",
    "apply_plan",
    "base_fingerprint",
    "calibrate_sharing",
    "layer_distances",
    "load_plan",
    "random_owners",
    "ranked_pairs",
    "resolve_owner",
    "save_plan",
    "sharing_fingerprint",
    "tentative",
    "with_share",
]


def apply_plan(model: Any, plan: SharingPlan) -> hf_cache.KVSharing:
    """Run ``model`` with ``plan``'s map from now on (see :func:`gearkv.worker.hf_cache.share_kv`).

    The caller checks the plan's fingerprint (:meth:`SharingPlan.check_model`); this checks the layer
    count and the attention layout.

    Raises:
        SharingPlanError: the plan is for a model with another number of layers.
        UnsupportedSharingError: the model lacks the standard attention layout, or shares KV under
            another map already.
    """
    layers = len(hf_cache.decoder_layers(model))
    if layers != plan.num_layers:
        raise SharingPlanError(f"the sharing plan is for {plan.num_layers} layers, the model has {layers}")
    return hf_cache.share_kv(model, plan.owners)
