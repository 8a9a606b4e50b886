"""U-Net denoiser backbone in the DDPM++ / SongUNet style (Song et al. 2021, "Score-Based Generative
Modeling through SDEs"; Karras et al. 2022, Appendix F.2; CorrDiff's SongUNet).

Residual blocks (GroupNorm, SiLU, 3x3 conv, noise embedding as scale/shift), self-attention at the
coarse levels, skip connections by concatenation, conditioning by channel concatenation. Any H x W:
the input is edge-padded to a multiple of 2^(levels-1) and the output cropped back. Only ops that
export to ONNX opset 17 cleanly (conv, group norm, matmul, softmax, pad, resize-free upsampling).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from precipfast.config import UNetConfig


def _groups(channels: int) -> int:
    """At most 32 groups with at least 4 channels each (SongUNet's GroupNorm rule)."""
    return max(1, min(32, channels // 4))


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar c_noise (Vaswani et al. 2017; DDPM++ uses it for EDM)."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        half = dim // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.float().reshape(-1, 1) * self.freqs.reshape(1, -1)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding scale/shift, GN-SiLU-dropout-conv, plus a (1x1) skip; scaled by 1/sqrt 2."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * c_out)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # each block starts as the identity (EDM init_zero)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) * (1 / math.sqrt(2))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a level (written with matmul + softmax for ONNX)."""

    def __init__(self, channels: int, channels_per_head: int):
        super().__init__()
        self.heads = max(1, channels // channels_per_head)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b * self.heads, 3 * d, h * w).chunk(3, dim=1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (1 / math.sqrt(d)), dim=-1)  # (bh, hw, hw)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.proj(out)) * (1 / math.sqrt(2))


class UNet(nn.Module):
    """F(x_in, c_noise, cond) -> residual estimate, shapes (B, in+cond, H, W) -> (B, out, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.model_channels
        emb_dim = cfg.emb_mult * ch
        self.embed = PositionalEmbedding(ch)
        self.emb_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, ch, 3, padding=1)

        self.enc = nn.ModuleList()
        skips = [ch]
        c = ch
        for level, mult in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            if level > 0:
                blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # downsample
                skips.append(c)
            for _ in range(cfg.num_blocks):
                blocks.append(ResBlock(c, ch * mult, emb_dim, cfg.dropout))
                c = ch * mult
                if level in cfg.attn_levels:
                    blocks.append(SelfAttention(c, cfg.channels_per_head))
                skips.append(c)
            self.enc.append(blocks)

        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, cfg.dropout),
                                  SelfAttention(c, cfg.channels_per_head),
                                  ResBlock(c, c, emb_dim, cfg.dropout)])

        self.dec = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), ch * cfg.channel_mult[level], emb_dim, cfg.dropout))
                c = ch * cfg.channel_mult[level]
                if level in cfg.attn_levels:
                    blocks.append(SelfAttention(c, cfg.channels_per_head))
            if level > 0:
                blocks.append(Upsample(c))
            self.dec.append(blocks)
        assert not skips, "every encoder activation must be consumed by the decoder"

        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        f = self.cfg.downsample_factor
        pad_h, pad_w = (-h_in) % f, (-w_in) % f
        h = torch.cat([x, cond.to(x.dtype)], dim=1) if self.cfg.cond_channels else x
        if pad_h or pad_w:
            # Edge padding keeps boundary statistics (zeros would look like a dry border).
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.emb_mlp(self.embed(c_noise).to(h.dtype))

        h = self.conv_in(h)
        skips = [h]
        for blocks in self.enc:
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
                if not isinstance(block, SelfAttention):
                    skips.append(h)
                else:
                    skips[-1] = h
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for blocks in self.dec:
            for block in blocks:
                if isinstance(block, ResBlock):
                    h = block(torch.cat([h, skips.pop()], dim=1), emb)
                else:
                    h = block(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[:, :, :h_in, :w_in]


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv (avoids checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def count_flops(cfg: UNetConfig, height: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass at H x W, counted with torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode
    net = UNet(cfg).eval()
    x = torch.zeros(1, cfg.in_channels, height, width)
    cond = torch.zeros(1, cfg.cond_channels, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.zeros(1), cond)
    return float(counter.get_total_flops())
