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

from uda.models.translation import (Encoder, Generator, ModulatedGenerator, Separator,
                                    cadt_attention, cadt_mix)


class DRANetTranslator(nn.Module):
    def __init__(self, width: int = 32, num_down: int = 2, gen_norm: str = "batch",
                 domains: Sequence[str] = ("source", "target"), style_mod: bool = False):
        """style_mod: the generator is instance-normalised and re-styled by the style code at
        every stage (AdaIN); gen_norm then does not apply."""
        super().__init__()
        self.encoder = Encoder(3, width=width, num_down=num_down)
        self.num_down = num_down  # inputs must be divisible by 2 ** num_down
        channels = self.encoder.out_channels
        self.separator = Separator(channels, domains)
        self.style_mod = style_mod
        self.generator = (ModulatedGenerator(channels, channels, 3, num_up=num_down) if style_mod
                          else Generator(channels, 3, num_up=num_down, norm=gen_norm))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (B,C,H,W) at the bottom and right to multiples of 2 ** num_down."""
        m = 2 ** self.num_down
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")

    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        content, rest = self.separator(self.encoder(x), domain)
        return content, rest.mean(dim=(2, 3), keepdim=True)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content (B,C,h,w) + style (B,C,1,1), broadcast over the frame (and, with style_mod,
        the code modulating every generator stage)."""
        if self.style_mod:
            return self.generator(content + style, style.flatten(1))
        return self.generator(content + style)

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
