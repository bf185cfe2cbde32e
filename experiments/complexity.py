"""Parameters and fvcore FLOPs (one multiply-add = one FLOP, eval mode, explicit attention, batch 1) of a method's
models, written to results/<method>/complexity.json for ``experiments/tables.py`` (docs' "Sizes" tables).

    python experiments/complexity.py iformer      # the six ImageNet variants and test_iformer (~2 min on one core)
    python experiments/complexity.py dualformer   # DualFormer-T/S/B backbones, one 32x224x224 view (~3 min)
    python experiments/complexity.py sun          # SUN's 80-px few-shot backbones (64-class head) and the 32-px ones
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# method -> [(model, model_info keyword arguments)]; the input is each model's default (224 or 384; test_iformer 32)
MODELS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "iformer": [("iformer_small", {}), ("iformer_base", {}), ("iformer_large", {}), ("iformer_small_384", {}),
                ("iformer_base_384", {}), ("iformer_large_384", {}), ("test_iformer", {"num_classes": 10})],
    # the papers' convention for video: backbone only (head omitted), one 1x3x32x224x224 view, K400 head for params
    "dualformer": [("dualformer_tiny", {}), ("dualformer_small", {}), ("dualformer_base", {})],
    # SUN (specs/sun.md §2.6): 80x80 inputs, the 64 miniImageNet base classes; the 32-px variants of the small plan
    "sun": [("visformer_micro_80", {"num_classes": 64}), ("nest_micro_resembed_80", {"num_classes": 64}),
            ("lvvit_micro_80", {"num_classes": 64}), ("test_visformer_fs32", {"num_classes": 5}),
            ("test_nest_fs32", {"num_classes": 5}), ("test_lvvit_fs32", {"num_classes": 5})],
}


def _backbone_view(name: str) -> dict[str, Any]:
    """Parameters (backbone, head) and backbone FLOPs of one default view of a video model."""
    import timm

    from vitlab.models.profile import count_flops, default_input_size, model_info

    info = model_info(name, flops=False)
    size = default_input_size(name)
    info["backbone_flops_per_view"] = count_flops(timm.create_model(name), size, backbone_only=True)
    info["head_params"] = info["params"] - info["backbone_params"]
    return info


def measure(method: str) -> dict[str, Any]:
    import fvcore
    import timm
    import torch

    from vitlab.models.profile import model_info

    if method == "dualformer":
        rows = [_backbone_view(name) for name, _ in MODELS[method]]
    else:
        rows = [model_info(name, **kwargs) for name, kwargs in MODELS[method]]
    return {"command": f"python experiments/complexity.py {method}", "rows": rows,
            "versions": {"torch": torch.__version__, "timm": timm.__version__,
                         "fvcore": getattr(fvcore, "__version__", "unknown")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder (default: results/)")
    args = parser.parse_args(argv)
    result = measure(args.method)
    path = args.out / args.method / "complexity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
