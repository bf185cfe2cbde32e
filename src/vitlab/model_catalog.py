"""The registered vitlab models with their parameters and default input sizes (``vitlab models``).

Written by ``python -m vitlab.models.catalog`` from timm's registry (do not edit by hand);
tests/models/test_catalog.py checks that it equals the registry. A plain table, so that ``vitlab models`` answers
without importing torch.
"""

from __future__ import annotations

import fnmatch
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "cifar_resnet18": {"params": 11173962, "backbone_params": 11168832, "input_size": (3, 224, 224)},
    "cifar_resnet20": {"params": 272474, "backbone_params": 271824, "input_size": (3, 224, 224)},
    "dm_wrn28_10": {"params": 36479194, "backbone_params": 36472784, "input_size": (3, 224, 224)},
    "dualformer_base": {"params": 87247632, "backbone_params": 86837632, "input_size": (3, 32, 224, 224)},
    "dualformer_small": {"params": 49215664, "backbone_params": 48908064, "input_size": (3, 32, 224, 224)},
    "dualformer_tiny": {"params": 21972560, "backbone_params": 21767360, "input_size": (3, 32, 224, 224)},
    "frame_avg": {"params": 11178564, "backbone_params": 11176512, "input_size": (3, 8, 32, 32)},
    "frame_avg_vit": {"params": 213700, "backbone_params": 213440, "input_size": (3, 8, 32, 32)},
    "iformer_base": {"params": 47866216, "backbone_params": 47353216, "input_size": (3, 224, 224)},
    "iformer_base_384": {"params": 48936296, "backbone_params": 48423296, "input_size": (3, 384, 384)},
    "iformer_large": {"params": 86637096, "backbone_params": 85996096, "input_size": (3, 224, 224)},
    "iformer_large_384": {"params": 87743656, "backbone_params": 87102656, "input_size": (3, 384, 384)},
    "iformer_small": {"params": 19866344, "backbone_params": 19481344, "input_size": (3, 224, 224)},
    "iformer_small_384": {"params": 20899944, "backbone_params": 20514944, "input_size": (3, 384, 384)},
    "lvvit_micro_80": {"params": 12621952, "backbone_params": 12597312, "input_size": (3, 80, 80)},
    "nest_micro_resembed_80": {"params": 12828288, "backbone_params": 12795456, "input_size": (3, 80, 80)},
    "preact_resnet18": {"params": 11172170, "backbone_params": 11167040, "input_size": (3, 224, 224)},
    "preact_resnet_small": {"params": 77850, "backbone_params": 77200, "input_size": (3, 224, 224)},
    "resnet12_80": {"params": 12465344, "backbone_params": 12424320, "input_size": (3, 80, 80)},
    "test_cifar_resnet": {"params": 5266, "backbone_params": 5096, "input_size": (3, 224, 224)},
    "test_dualformer": {"params": 846276, "backbone_params": 845760, "input_size": (3, 8, 32, 32)},
    "test_dualformer_global": {"params": 841284, "backbone_params": 840768, "input_size": (3, 8, 32, 32)},
    "test_iformer": {"params": 1173482, "backbone_params": 1171872, "input_size": (3, 32, 32)},
    "test_lvvit_fs32": {"params": 200778, "backbone_params": 199808, "input_size": (3, 32, 32)},
    "test_nest_fs32": {"params": 384922, "backbone_params": 383632, "input_size": (3, 32, 32)},
    "test_resnet12_fs32": {"params": 502890, "backbone_params": 501600, "input_size": (3, 32, 32)},
    "test_visformer_fs32": {"params": 328058, "backbone_params": 326768, "input_size": (3, 32, 32)},
    "visformer_micro_80": {"params": 12564224, "backbone_params": 12531392, "input_size": (3, 80, 80)},
}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the vitlab models matching a shell-style pattern, sorted (like ``list_vitlab_models``)."""
    return sorted(name for name in MODELS if fnmatch.fnmatch(name, pattern))


def model_row(name: str) -> dict[str, Any]:
    """``{"model", "params", "backbone_params", "input_size"}`` of a vitlab model, like
    ``vitlab.models.profile.model_info(name, flops=False)``."""
    return {"model": name, **MODELS[name], "input_size": list(MODELS[name]["input_size"])}
