#!/usr/bin/env python3
"""Give a model file a new list of classes, each started from one or more of its old ones.

    python3 scripts/remap_classes.py IN OUT NEW[=OLD[+OLD...]] ...

For fine-tuning on a re-sorted corpus (`tarflow train NEW_CORPUS --from OUT`): `train --from`
keeps a model's classes and gives new class folders new, untrained ids, so a corpus whose classes
were merged, split or renamed would leave dead classes in the model. This writes OUT with exactly
the classes listed, in that order: `NEW` alone keeps the old class of that name; `NEW=A+B` starts
NEW from the mean of A's and B's class embeddings (every block's `class_embed` row). The recommended
sampling settings and the palettes are dropped (they describe the old classes: `train` relearns
the palettes, `tarflow recommend` records new settings); everything else (weights, provenance,
licence) is kept. The bundled sprite model was made this way from its earlier 14-class version
(DESIGN.md 18):

    python3 scripts/remap_classes.py old.safetensors warm.safetensors altar armour book=consumable \
        consumable dungeon_feature effect floor monster passage=door+stairs_portal \
        treasure=treasure+magic_item wall weapon

Needs numpy and safetensors (`python3 -m pip install numpy safetensors`).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def parse(spec: str, old: list[str]) -> tuple[str, list[str]]:
    new, _, rest = spec.partition("=")
    sources = rest.split("+") if rest else [new]
    for s in sources:
        if s not in old:
            sys.exit(f"{spec}: the model has no class {s!r} (it has: {', '.join(old)})")
    if not new:
        sys.exit(f"{spec}: empty class name")
    return new, sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="model file (.safetensors) to read")
    ap.add_argument("output", help="model file to write (must differ from the input)")
    ap.add_argument("classes", nargs="+", help="NEW or NEW=OLD[+OLD...], in the new order")
    args = ap.parse_args()
    if args.input == args.output:
        sys.exit("the output must be another file: the input is not overwritten")

    with safe_open(args.input, "np") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        sys.exit(f"{args.input}: not a tarflow model file (no config in its metadata)")
    cfg = json.loads(meta["config"])
    old = cfg.get("class_names") or []
    if not old:
        sys.exit(f"{args.input}: the model has no class names")
    plan = [parse(s, old) for s in args.classes]
    names = [n for n, _ in plan]
    if len(set(names)) != len(names):
        sys.exit(f"a class is listed twice: {', '.join(names)}")

    embeds = [k for k in tensors if k.endswith("class_embed")]
    if not embeds:
        sys.exit(f"{args.input}: no class_embed tensors")
    for k in embeds:
        e = tensors[k]
        if e.shape[0] != len(old):
            sys.exit(f"{k}: {e.shape[0]} rows for {len(old)} classes")
        rows = [np.mean([e[old.index(s)] for s in src], axis=0) for _, src in plan]
        tensors[k] = np.ascontiguousarray(np.stack(rows).astype(e.dtype))
    cfg["class_names"] = names
    cfg["num_classes"] = len(names)
    cfg.pop("sampling", None)
    cfg.pop("palettes", None)
    meta["config"] = json.dumps(cfg)
    save_file(tensors, args.output, metadata=meta)
    for n, src in plan:
        print(f"{n:20s} <- {' + '.join(src)}", file=sys.stderr)


if __name__ == "__main__":
    main()
