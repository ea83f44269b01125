#!/usr/bin/env python3
"""Golden vectors for noise-conditional TarFlow from iTARFlow's own code (apple/ml-itarflow).

Builds a tiny class-conditional model with iTARFlow's `transformer_flow.Model` (its
FourierTimeEmbedding in every block), gives every tensor random values (proj_out too, so the flow
is not the identity), and records what the engine must reproduce:

- the forward pass at per-item noise levels t (z, logdets), as `Model.forward(x, y, t)`;
- the reweighted loss of `Model.get_loss` (`--reweight t`: weight = t) and its gradient in x;
- the reverse pass at the sampling level t1 from given noise, unguided. (Guidance is not
  recorded: iTARFlow's `lerp_style='tarflow'` extrapolates the scale exp(alpha) where ml-tarflow,
  and we, extrapolate alpha, and its `'starflow'` rule guides the first reversed block only.)

Usage: python3 scripts/golden_itarflow.py PATH/TO/ml-itarflow OUT_DIR
(needs torch, numpy, safetensors). Writes OUT_DIR/itarflow_tiny.{json,weights.safetensors,
cases.safetensors}; the weights keep iTARFlow's state_dict names (`head_blocks`).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, sys.argv[1])
import transformer_flow  # noqa: E402

out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
cfg = dict(in_channels=3, img_size=4, patch_sizes=[2], channels=[64], num_blocks=2,
           layers_per_block=[1], nvp=True, num_classes=3)
model = transformer_flow.Model(**cfg)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("proj_out.weight"):
            p.copy_(torch.randn_like(p) * 0.05)
        elif "time_embed" in name or "proj_out.bias" in name:
            p.add_(torch.randn_like(p) * 0.05)
        elif name.endswith("pos_embed") or name.endswith("class_embed"):
            p.copy_(torch.randn_like(p) * 0.3)
model.eval()

b = 4
x = (torch.rand(b, 3, 4, 4) * 2 - 1)
y = torch.tensor([0, 2, -1, 1])
t = torch.tensor([[0.02], [0.1], [0.3], [0.05]])
z, _, logdets, mid = model(x, y, t.clone())
loss = model.get_loss(z, logdets, mid, t.clone())
xg = x.clone().requires_grad_(True)
zg, _, ldg, midg = model(xg, y, t.clone())
(grad,) = torch.autograd.grad(model.get_loss(zg, ldg, midg, t.clone()), [xg])

t1 = 0.3
noise = torch.randn(b, 4, 12)
tt = torch.full((b, 1), t1)
with torch.no_grad():
    x_rev = model.reverse(noise.clone(), y.clamp(min=0), t=tt.clone())

save_file({k: v.contiguous() for k, v in model.state_dict().items()},
          str(out / "itarflow_tiny.weights.safetensors"))
save_file({k: v.contiguous() for k, v in {
    "x": x, "y": y, "t": t.reshape(b), "z": z.detach(), "logdets": logdets.detach(),
    "loss": loss.detach().reshape(1), "grad_x": grad, "noise": noise,
    "y_reverse": y.clamp(min=0), "x_reverse": x_rev,}.items()}, str(out / "itarflow_tiny.cases.safetensors"))
meta = dict(cfg, t0=0.01, t1=t1, torch=torch.__version__,
            source="apple/ml-itarflow transformer_flow.py")
(out / "itarflow_tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
print("wrote", out)
