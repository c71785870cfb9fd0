# SPDX-License-Identifier: Apache-2.0
"""Ray placement of Helix ranks on one NVLink domain (`layout`: pure planning; `ray_adapter`, `cli`: Ray)."""

from vllm_helix.placement.layout import (
    DOMAIN_LABEL,
    NVL72_GPUS,
    BundlePlan,
    NodeView,
    PlacementError,
    plan_bundles,
)

__all__ = ["DOMAIN_LABEL", "NVL72_GPUS", "BundlePlan", "NodeView", "PlacementError", "plan_bundles"]
