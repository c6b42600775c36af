"""bf16 gradient precision of the adversarial recipe, on the CPU: for one toy batch and an
adversarial run's checkpoint, each loss term's gradient w.r.t. the segmenter (and the
discriminator loss's w.r.t. the discriminator) under fp32 and under bf16 autocast; prints the
cosine and the relative L2 error of bf16 against fp32 (README "bf16 on the CPU (toy)").

    python scripts/bf16_gradients.py RUN/checkpoints/last.ckpt \\
        data.source.root=... data.target.root=...
"""
import sys

import torch

from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.losses import segmentation_ce
from uda.losses.gan import discriminator_loss, generator_loss
from uda.modules.adversarial import SOURCE_LABEL

ckpt_path = sys.argv[1]
ckpt = read_checkpoint(ckpt_path)
cfg = config_for(ckpt, ckpt_path, overrides=sys.argv[2:])
module = build.load_module(ckpt, cfg, ckpt_path)
module.train()
dm = build.build_datamodule(cfg)
dm.setup("fit")
loader = dm.train_dataloader()
batch = next(iter(loader))
if isinstance(batch, (list, tuple)):
    batch = batch[0]
src, tgt = batch["source"], batch["target"]
seg, D = module.segmenter, module.discriminators["main"]
params = [p for p in seg.parameters() if p.requires_grad]
dparams = list(D.parameters())


def grads(loss_fn, ps, bf16):
    for p in ps:
        p.grad = None
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn()
    g = torch.autograd.grad(loss.float(), ps, allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float()
                      for x, p in zip(g, ps)]), float(loss.detach())


def ce():
    return segmentation_ce(seg(src["image"]), src["mask"])


def adv():
    return module.lambda_adv * generator_loss(D(module.d_input_map(seg(tgt["image"]))),
                                              module.gan_loss, read_as=SOURCE_LABEL)


def dloss():
    with torch.no_grad():
        ot, os_ = seg(tgt["image"]), seg(src["image"])
    return 0.5 * discriminator_loss(D(module.d_input_map(ot)), D(module.d_input_map(os_)),
                                    module.gan_loss)


for name, fn, ps in (("source CE -> segmenter", ce, params),
                     ("lambda_adv x adversarial -> segmenter", adv, params),
                     ("discriminator loss -> discriminator", dloss, dparams)):
    g32, l32 = grads(fn, ps, False)
    g16, l16 = grads(fn, ps, True)
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    rel = ((g16 - g32).norm() / g32.norm()).item()
    print(f"{name:40s} loss fp32 {l32:.6g} bf16 {l16:.6g}  grad norm fp32 {g32.norm():.4g}  "
          f"cos {cos:.4f}  rel.err {rel:.4f}")
