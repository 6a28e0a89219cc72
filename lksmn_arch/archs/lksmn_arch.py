"""LKSMN: Large Kernel Spatial Modulation Network for lightweight image super-resolution.

Zhang et al., The Visual Computer 2024 (DOI 10.1007/s00371-024-03562-5). The paper's code and full
text are out of reach; this is a reconstruction from its abstract, built from the published
definitions of its parts (VAN's large-kernel decomposition, Conv2Former's convolutional modulation,
Restormer's MDTA and gated feed-forward). See the ``LKSMN`` docstring for what is the paper's and what
is ours.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from einops import rearrange
from torch import nn

SUPPORTED_SCALES = (2, 3, 4)


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel dimension of an NCHW tensor (as in Restormer/Conv2Former)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # inductor fuses this reduction over dim 1 with its neighbours (faster compiled than the below)
            var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
            x = (x - mean) * torch.rsqrt(var + self.eps)
            return x * self.weight[:, None, None] + self.bias[:, None, None]
        # eager: F.layer_norm over a channels-last view is one fused kernel, several times faster than
        # reducing over dim 1 of NCHW; the result keeps channels-last strides, which the next convs accept.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LKCD(nn.Module):
    """Large-kernel convolution decomposition (VAN's LKA without its multiplication).

    A ``kernel_size`` x ``kernel_size`` depthwise kernel is approximated by a (2d-1)x(2d-1) depthwise
    conv (local context), a ceil(K/d)x ceil(K/d) depthwise conv with dilation d (long range) and a 1x1
    conv (channel mixing). The local kernel size encodes d, so the hyperparameters can be read back
    from a checkpoint's tensor shapes.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        local = 2 * dilation - 1
        dilated = math.ceil(kernel_size / dilation)
        dilated += 1 - dilated % 2  # odd, so that 'same' padding is symmetric
        self.local = nn.Conv2d(channels, channels, local, padding=local // 2, groups=channels)
        self.dilated = nn.Conv2d(channels, channels, dilated, padding=dilation * (dilated // 2),
                                 dilation=dilation, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.dilated(self.local(x)))


class MSMA(nn.Module):
    """Multi-scale spatial modulation attention.

    Convolutional modulation (Conv2Former): an attention branch, made of LKCD features rather than
    query-key scores, multiplies a value branch. The attention branch is multi-scale: its channels are
    split into groups, each with an LKCD of a different reach (as MAN's MLKA does).
    """

    def __init__(self, channels: int, lkcd_kernels: Sequence[Tuple[int, int]]) -> None:
        super().__init__()
        groups = len(lkcd_kernels)
        self.group_channels = channels // groups
        self.attention_in = nn.Conv2d(channels, channels, 1)
        self.lkcd = nn.ModuleList(LKCD(self.group_channels, k, d) for k, d in lkcd_kernels)
        self.value = nn.Conv2d(channels, channels, 1)
        self.project_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = F.gelu(self.attention_in(x))
        groups = torch.split(attention, self.group_channels, dim=1)
        attention = torch.cat([lkcd(group) for lkcd, group in zip(self.lkcd, groups)], dim=1)
        return self.project_out(attention * self.value(x))


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (Restormer): attention across channels, linear in H*W.

    Each head's attention is a (C/heads x C/heads) matrix of cosine similarities between channel
    maps over the whole image, scaled by a learnable per-head temperature.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.qkv_dwconv = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3)
        self.project_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, 'b (head c) h w -> b head c (h w)', head=self.num_heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1)) * self.temperature
        out = attention.softmax(dim=-1) @ v
        out = rearrange(out, 'b head c (h w) -> b (head c) h w', h=height, w=width)
        return self.project_out(out)


class GatedFeedForward(nn.Module):
    """Gated-Dconv feed-forward network (Restormer's GDFN): GELU(x1) * x2 after a depthwise 3x3."""

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.project_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class LKSMBlock(nn.Module):
    """One block: spatial attention (MSMA), channel attention (MDTA), feed-forward; pre-norm residuals."""

    def __init__(self, channels: int, lkcd_kernels: Sequence[Tuple[int, int]], num_heads: int,
                 ffn_expansion: float) -> None:
        super().__init__()
        self.norm_spatial = LayerNorm2d(channels)
        self.msma = MSMA(channels, lkcd_kernels)
        self.norm_channel = LayerNorm2d(channels)
        self.mdta = MDTA(channels, num_heads)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.msma(self.norm_spatial(x))
        x = x + self.mdta(self.norm_channel(x))
        return x + self.ffn(self.norm_ffn(x))


class MLFA(nn.Module):
    """Multi-level feature aggregation: fuse the shallow features and every block's output.

    Concatenation, 1x1 fusion, GELU and a 3x3 conv, so that shallow information reaches the
    reconstruction directly; the caller adds the long skip from the shallow features.
    """

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(channels * num_levels, channels, 1)
        self.refine = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.refine(F.gelu(self.fuse(torch.cat(list(levels), dim=1))))


class PixelShuffleUpsampler(nn.Sequential):
    """Lightweight-SR reconstruction: one 3x3 conv to out_channels * scale^2, then PixelShuffle."""

    def __init__(self, channels: int, out_channels: int, scale: int) -> None:
        super().__init__(nn.Conv2d(channels, out_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale))


def _check_choice(name: str, value: object, accepted: Sequence[object]) -> None:
    if type(value) is not int or value not in accepted:
        raise ValueError(f'LKSMN: {name} must be one of {list(accepted)} (an int), got {value!r}')


def _check_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f'LKSMN: {name} must be a positive int, got {value!r}')


@ARCH_REGISTRY.register()
class LKSMN(nn.Module):
    """Large Kernel Spatial Modulation Network (reconstruction).

    From the paper's abstract: MSMA (convolutional modulation whose attention imitates a relevance
    matrix with multi-scale LKCD features) for spatial attention, MDTA for channel attention, MLFA to
    aggregate features of all depths, and the x4 budget of 253K parameters.

    Ours (the abstract is silent): 5 blocks of 48 channels; each block is pre-norm MSMA, MDTA and a
    gated feed-forward (Restormer's GDFN) with channel LayerNorm; MSMA's attention branch is a 1x1
    conv and GELU, then three channel groups with LKCD of reach 9 (d=2), 21 (d=3) and 33 (d=4), the
    decompositions MAN uses; MLFA fuses the shallow features with all block outputs (concat, 1x1,
    GELU, 3x3) plus a long skip; reconstruction is a 3x3 conv and PixelShuffle. The default has
    251,284 parameters at x4 (253K - 0.7%).

    Args:
        upscale: scale factor, 2, 3 or 4.
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        num_feat: feature channels C; divisible by len(lkcd_kernels) and by num_heads.
        num_block: number of blocks N.
        lkcd_kernels: (kernel size K, dilation d) of each MSMA group's LKCD.
        num_heads: MDTA heads.
        ffn_expansion: hidden width of the gated feed-forward, as a multiple of num_feat.
    """

    def __init__(self, *, upscale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48,
                 num_block: int = 5, lkcd_kernels: Sequence[Sequence[int]] = ((9, 2), (21, 3), (33, 4)),
                 num_heads: int = 4, ffn_expansion: float = 2.0) -> None:
        super().__init__()
        _check_choice('upscale', upscale, SUPPORTED_SCALES)
        for name, value in (('num_in_ch', num_in_ch), ('num_out_ch', num_out_ch), ('num_feat', num_feat),
                            ('num_block', num_block), ('num_heads', num_heads)):
            _check_positive_int(name, value)
        kernels = tuple(tuple(pair) for pair in lkcd_kernels)
        if not kernels or any(len(pair) != 2 or type(pair[0]) is not int or type(pair[1]) is not int or pair[0] < 1
                              or pair[1] < 1 for pair in kernels):
            raise ValueError(f'LKSMN: lkcd_kernels must be a non-empty list of [kernel_size, dilation] pairs of '
                             f'positive ints, got {lkcd_kernels!r}')
        if num_feat % len(kernels) or num_feat % num_heads:
            raise ValueError(f'LKSMN: num_feat ({num_feat}) must be divisible by the number of lkcd_kernels '
                             f'({len(kernels)}) and by num_heads ({num_heads})')
        if not ffn_expansion > 0:
            raise ValueError(f'LKSMN: ffn_expansion must be positive, got {ffn_expansion!r}')
        self.upscale = upscale
        self.num_in_ch = num_in_ch

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.blocks = nn.ModuleList(
            LKSMBlock(num_feat, kernels, num_heads, ffn_expansion) for _ in range(num_block))
        self.mlfa = MLFA(num_feat, num_block + 1)
        self.upsampler = PixelShuffleUpsampler(num_feat, num_out_ch, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_in_ch:
            raise ValueError(f'LKSMN: input x must be a 4D (batch, {self.num_in_ch}, height, width) tensor, '
                             f'got shape {tuple(x.shape)}')
        shallow = self.conv_first(x)
        levels = [shallow]
        for block in self.blocks:
            levels.append(block(levels[-1]))
        return self.upsampler(self.mlfa(levels) + shallow)
