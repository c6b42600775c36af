"""DRANet translator: shared encoder E, separator S, generator G as one plain module.

Images are in [-1, 1]. `encode(x, domain) -> (content (B,C,h,w), style (B,C,1,1))`;
`decode(content, style) -> image`; `transfer(content_src, style_bank, attn)` decodes each source
content with its CADT-mixed style. H and W must be divisible by 2 ** num_down (`pad` makes
any frame so; crop the output back with [..., :H, :W]).

Style code: the separator splits F into content = w_d * S(F) and F - content; the style is the
spatial mean of F - content, a per-channel code. A spatial style map would carry the layout of
the image it came from into every translation (seen on the toy benchmark: translated frames
took the target frames' structure); a per-channel code carries none, fits any frame size
(crops train, full frames translate), and the reconstruction loss makes the content map hold
everything spatial.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from uda.models.translation import Encoder, Generator, Separator, cadt_attention, cadt_mix


class DRANetTranslator(nn.Module):
    def __init__(self, width: int = 32, num_down: int = 1, num_res: int = 2,
                 enc_norm: str = "batch", domains: Sequence[str] = ("source", "target"),
                 checkpointing: bool = False):
        """width: the encoder's first width (features have width * 2**num_down channels);
        num_down: stride-2 stages (features at 1/2**num_down); num_res: residual blocks in the
        encoder and in the generator; enc_norm: the encoder's normalisation (batch | bin |
        instance | none); checkpointing: decodes with gradients keep only their inputs and
        recompute the generator in backward (it has no batch statistics, so the recomputation
        is exact; the encoder's BatchNorm would update its running statistics twice)."""
        super().__init__()
        self.checkpointing = checkpointing
        self.encoder = Encoder(3, width=width, num_down=num_down, norm=enc_norm, num_res=num_res)
        self.num_down = num_down  # inputs must be divisible by 2 ** num_down
        channels = self.encoder.out_channels
        self.separator = Separator(channels, domains)
        self.generator = Generator(channels, channels, 3, num_up=num_down, num_res=num_res)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (B,C,H,W) at the bottom and right to multiples of 2 ** num_down."""
        m = 2 ** self.num_down
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")

    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_many([(x, domain)])[0]

    def encode_many(self, batches: Sequence[tuple[torch.Tensor, str]]
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(images, domain), ...] -> [(content, style), ...], encoded as ONE batch.

        Training encodes source and target together: the encoder's BatchNorm then normalises
        with statistics of both domains, as its running statistics (used in eval mode) do. Per
        domain batches would each be normalised to zero mean, removing in training exactly
        the per-domain style that the separator is to find, and train-mode translations would
        differ from eval-mode ones."""
        if len({x.shape[-2:] for x, _ in batches}) > 1:  # frames of different sizes cannot
            # share one tensor: encoded one by one (in eval mode this changes nothing)
            return [self.encode_many([pair])[0] for pair in batches]
        sizes = [x.shape[0] for x, _ in batches]
        domains = [d for (x, d) in batches for _ in range(x.shape[0])]
        feat = self.encoder(torch.cat([x for x, _ in batches]))
        content, rest = self.separator.split(feat, domains)
        styles = rest.mean(dim=(2, 3), keepdim=True)
        return list(zip(content.split(sizes), styles.split(sizes)))

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content (B,C,h,w) + style (B,C,1,1), broadcast over the frame, the code also
        modulating every generator stage."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self.generator, content + style, style.flatten(1),
                              use_reentrant=False)
        return self.generator(content + style, style.flatten(1))

    @staticmethod
    def attention(content_src: torch.Tensor, content_bank: torch.Tensor,
                  temperature: float) -> torch.Tensor:
        """CADT attention (B_src, B_bank), rows sum to 1; contents are detached (the attention
        chooses styles, it is not trained through)."""
        return cadt_attention(content_src.detach(), content_bank.detach(), temperature)

    def transfer(self, content_src: torch.Tensor, style_bank: torch.Tensor,
                 attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(translated images, the mixed style codes used (B_src,C,1,1))."""
        style = cadt_mix(attn, style_bank)
        return self.decode(content_src, style), style
