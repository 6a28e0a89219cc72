"""LKSMN: Large Kernel Spatial Modulation Network for lightweight image super-resolution.

Zhang et al., The Visual Computer 2024 (DOI 10.1007/s00371-024-03562-5). The paper's code and full
text are out of reach; this is a reconstruction from its abstract, built from the published
definitions of its parts (VAN's large-kernel decomposition, Conv2Former's convolutional modulation,
Restormer's MDTA and gated feed-forward, SAFMN's convolutional channel mixer). See the ``LKSMN``
docstring for what is the paper's and what is ours.

Every module has a training form (what checkpoints hold) and an exact inference form, made by
``LKSMN.fuse_for_inference()``: normalisation affines folded into the convs that read them, MSMA's
per-group convs merged, MDTA computed on channels-last matrices with its output projection folded into
its attention matrix.
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

SUPPORTED_SCALES = (2, 3, 4)
NORMS = ('layernorm', 'batchnorm', 'none')
FFNS = ('gated_dconv', 'conv_mixer', 'none')

# An affine map per channel, x * scale + shift, that a normalisation hands to the conv reading its output.
Affine = Tuple[torch.Tensor, torch.Tensor]


# --- folding helpers (inference form) --------------------------------------------------------------------

@torch.no_grad()
def _fold_affine_into_conv(conv: nn.Conv2d, affine: Affine) -> None:
    """Make the dense 1x1 ``conv(x)`` compute what ``conv(x * scale + shift)`` did (per input channel).

    Only a 1x1 conv without padding takes the shift exactly: a padded conv would see the shift where the
    original saw zero padding.
    """
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding != (0, 0):
        raise ValueError('an affine folds exactly only into a dense 1x1 conv without padding')
    scale, shift = affine
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
    conv.bias += conv.weight[:, :, 0, 0] @ shift
    conv.weight *= scale.view(1, -1, 1, 1)


@torch.no_grad()
def _merge_grouped(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One grouped conv that replaces split, ``convs``, concatenate: conv i reads the i-th channel group."""
    first, groups = convs[0], len(convs)
    merged = nn.Conv2d(first.in_channels * groups, sum(c.out_channels for c in convs), first.kernel_size,
                       padding=first.padding, dilation=first.dilation, groups=groups, bias=True)
    merged.weight.copy_(torch.cat([c.weight for c in convs]))
    merged.bias.copy_(torch.cat([c.bias if c.bias is not None else torch.zeros(c.out_channels) for c in convs]))
    return merged.to(first.weight.device, first.weight.dtype)


@torch.no_grad()
def _slice_conv(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """The output channels start:stop of ``conv`` (dense or depthwise) as a conv of their own."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    channels = stop - start
    sliced = nn.Conv2d(channels if depthwise else conv.in_channels, channels, conv.kernel_size,
                       padding=conv.padding, dilation=conv.dilation, groups=channels if depthwise else 1)
    sliced.weight.copy_(conv.weight[start:stop])
    sliced.bias.copy_(conv.bias[start:stop])
    return sliced.to(conv.weight.device, conv.weight.dtype)


@torch.no_grad()
def _merge_depthwise(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One depthwise conv over the channels of ``convs`` (which share a dilation), kernels zero-padded to the
    largest one and centred: the same output, since the zero weights only reach into the wider padding."""
    size = max(c.kernel_size[0] for c in convs)
    dilation = convs[0].dilation[0]
    channels = sum(c.in_channels for c in convs)
    merged = nn.Conv2d(channels, channels, size, padding=dilation * (size // 2), dilation=dilation, groups=channels)
    merged.weight.zero_()
    start = 0
    for conv in convs:
        k, n = conv.kernel_size[0], conv.in_channels
        offset = (size - k) // 2
        merged.weight[start:start + n, :, offset:offset + k, offset:offset + k] = conv.weight
        merged.bias[start:start + n] = conv.bias
        start += n
    return merged.to(convs[0].weight.device, convs[0].weight.dtype)


# --- normalisation -----------------------------------------------------------------------------------------

class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel dimension of an NCHW tensor (as in Restormer/Conv2Former).

    ``take_affine()`` (inference form) hands its per-channel affine to the next conv and keeps only the
    standardisation.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight: Optional[nn.Parameter] = nn.Parameter(torch.ones(channels))
        self.bias: Optional[nn.Parameter] = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # inductor fuses this reduction over dim 1 with its neighbours (faster compiled than the below)
            var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
            x = (x - mean) * torch.rsqrt(var + self.eps)
            if self.weight is not None:
                x = x * self.weight[:, None, None]
            return x if self.bias is None else x + self.bias[:, None, None]
        # eager: F.layer_norm over a channels-last view is one fused kernel, several times faster than
        # reducing over dim 1 of NCHW; the result keeps channels-last strides, which the next convs accept.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    @torch.no_grad()
    def take_affine(self) -> Affine:
        """Remove and return (scale, shift): what is left is the plain standardisation."""
        affine = self.weight.detach().clone(), self.bias.detach().clone()
        self.weight = self.bias = None
        return affine


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics are frozen parameters rather than buffers, so that EMA sees them.

    BasicSR's ``model_ema`` averages ``named_parameters()`` only: with buffers, the EMA network (``params_ema``,
    what test option files load) would keep the initial statistics (mean 0, variance 1) for ever. As parameters
    with ``requires_grad=False`` they are averaged like the weights, in any BasicSR model, and the optimizer
    leaves them alone (BasicSR's SRModel logs "will not be optimized" for each; LKSMNModel does not).

    It has no buffers at all (``num_batches_tracked`` is only used with ``momentum=None``): DDP broadcasts
    buffers at every forward, and BasicSR validates on rank 0 alone, so a buffer would hang that broadcast.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        mean, var = self._buffers.pop('running_mean'), self._buffers.pop('running_var')
        self.running_mean = nn.Parameter(mean, requires_grad=False)
        self.running_var = nn.Parameter(var, requires_grad=False)
        del self._buffers['num_batches_tracked']
        self.num_batches_tracked = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # earlier versions wrote num_batches_tracked (unused); BatchNorm's own loader would even add it back
        # for files without version metadata, so the plain Module loader is used
        state_dict.pop(prefix + 'num_batches_tracked', None)
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


def _make_norm(kind: str, channels: int) -> nn.Module:
    if kind == 'layernorm':
        return LayerNorm2d(channels)
    if kind == 'batchnorm':
        return BatchNorm2d(channels)
    return nn.Identity()


@torch.no_grad()
def _take_norm_affine(block: nn.Module, name: str) -> Optional[Affine]:
    """Take the affine map out of ``block.<name>`` (a norm) for folding into the next conv.

    LayerNorm keeps its standardisation; BatchNorm (eval statistics) is affine as a whole and becomes an
    Identity. Returns None for no normalisation.
    """
    norm = getattr(block, name)
    if isinstance(norm, LayerNorm2d):
        return norm.take_affine()
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        setattr(block, name, nn.Identity())
        return scale, shift
    return None


# --- the paper's parts -------------------------------------------------------------------------------------

def _reach(conv: nn.Conv2d) -> int:
    """How many pixels away from an output pixel a (square, odd) conv reads."""
    return conv.dilation[0] * (conv.kernel_size[0] // 2)


class LKCD(nn.Module):
    """Large-kernel convolution decomposition (VAN's LKA without its multiplication).

    A ``kernel_size`` x ``kernel_size`` depthwise kernel is approximated by a (2d-1)x(2d-1) depthwise
    conv (local context), a ceil(K/d)x ceil(K/d) depthwise conv with dilation d (long range) and a 1x1
    conv (channel mixing). The local kernel size encodes d, so the hyperparameters can be read back
    from a checkpoint's tensor shapes.

    ``depthwise_fp32_under_autocast`` (off by default; ``set_lkcd_depthwise_fp32`` sets it network-wide) runs the
    two depthwise convs in fp32 inside an autocast region: on an Intel Xeon with AMX, oneDNN's bf16 backward of
    these narrow (16-channel) depthwise convs took 2.5x its fp32 time, more than bf16 saved everywhere else
    (``lksmn_arch.models.training_path`` times whether it pays on the CPU at hand).
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
        self.depthwise_fp32_under_autocast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise_fp32_under_autocast and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                x = self.dilated(self.local(x.float()))
            return self.pointwise(x)  # under autocast again
        return self.pointwise(self.dilated(self.local(x)))

    @property
    def radius(self) -> int:
        """How far (in pixels) an output pixel reads its input: the local conv's reach plus the dilated one's."""
        return _reach(self.local) + _reach(self.dilated)


def set_lkcd_depthwise_fp32(net: nn.Module, enabled: bool) -> int:
    """Set ``LKCD.depthwise_fp32_under_autocast`` on every LKCD in ``net``; the number of LKCDs (0 for a
    network without them, such as SAFMN)."""
    lkcds = [module for module in net.modules() if isinstance(module, LKCD)]
    for lkcd in lkcds:
        lkcd.depthwise_fp32_under_autocast = enabled
    return len(lkcds)


class MSMA(nn.Module):
    """Multi-scale spatial modulation attention.

    Convolutional modulation (Conv2Former): an attention branch, made of LKCD features rather than
    query-key scores, multiplies a value branch. The attention branch is multi-scale: its channels are
    split into groups, each with an LKCD of a different reach (as MAN's MLKA does).

    Inference form (``fuse``): the groups' local depthwise convs become one (smaller kernels zero-padded to
    the largest), and so do their dilated convs when the groups share a dilation; their pointwise convs
    become one grouped 1x1 conv. A depthwise conv over all channels runs several times faster per
    multiply-add than one per group. attention_in and value, two 1x1 convs on the same input, stay two:
    merged, their output must be split again, which OpenVINO does with a copy that cost more than the
    merge saved (benchmarks/speed.py, OpenVINO fp32: 9 ms of 300 for the three blocks).
    """

    def __init__(self, channels: int, lkcd_kernels: Sequence[Tuple[int, int]]) -> None:
        super().__init__()
        groups = len(lkcd_kernels)
        self.group_channels = channels // groups
        self.attention_in = nn.Conv2d(channels, channels, 1)
        self.lkcd = nn.ModuleList(LKCD(self.group_channels, k, d) for k, d in lkcd_kernels)
        self.value = nn.Conv2d(channels, channels, 1)
        self.project_out = nn.Conv2d(channels, channels, 1)
        # inference form (fuse)
        self.local: Optional[nn.Conv2d] = None
        self.dilated: Optional[nn.Conv2d] = None
        self.pointwise: Optional[nn.Conv2d] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = F.gelu(self.attention_in(x))
        if self.local is None:  # training form: each group's whole LKCD
            attention = self._per_group(attention, lambda lkcd, group: lkcd(group))
            return self.project_out(attention * self.value(x))
        attention = self.local(attention)
        if self.dilated is not None:
            attention = self.dilated(attention)
        else:
            attention = self._per_group(attention, lambda lkcd, group: lkcd.dilated(group))
        return self.project_out(self.pointwise(attention) * self.value(x))

    def _per_group(self, x: torch.Tensor, apply: Callable[[LKCD, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``apply(lkcd, channel group)`` for each LKCD group, concatenated."""
        if len(self.lkcd) == 1:
            return apply(self.lkcd[0], x)
        groups = torch.split(x, self.group_channels, dim=1)
        return torch.cat([apply(lkcd, group) for lkcd, group in zip(self.lkcd, groups)], dim=1)

    @torch.no_grad()
    def fuse(self, affine: Optional[Affine]) -> None:
        if affine is not None:
            _fold_affine_into_conv(self.attention_in, affine)
            _fold_affine_into_conv(self.value, affine)
        self.local = _merge_depthwise([lkcd.local for lkcd in self.lkcd])
        if len({lkcd.dilated.dilation for lkcd in self.lkcd}) == 1:
            self.dilated = _merge_depthwise([lkcd.dilated for lkcd in self.lkcd])
        self.pointwise = _merge_grouped([lkcd.pointwise for lkcd in self.lkcd])
        for lkcd in self.lkcd:
            del lkcd.local, lkcd.pointwise
            if self.dilated is not None:
                del lkcd.dilated


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (Restormer): attention across channels, linear in H*W.

    Each head's attention is a (C/heads x C/heads) matrix of cosine similarities between channel
    maps over the whole image, scaled by a learnable per-head temperature.

    Inference form (``fuse``): the same function on (batch, H*W, C) matrices, which are free views of
    channels-last tensors (the planar per-head matrices of the training form cost a layout copy on
    OpenVINO, and the split of the fused qkv tensor a second one: 30 ms of 300 for three blocks):
    - q, k and v come from three 1x1 + depthwise conv pairs (the qkv convs sliced), not one split tensor;
    - one C x C Gram matrix q^T k, divided by the norms of q's and k's columns instead of normalising the
      full-resolution q and k, and softmax over each head's diagonal block (the other entries -inf);
    - the output projection folded into that attention matrix, which saves a full-resolution pass.

    Exact tiled inference (``lksmn_arch.inference.exact_tiles``) uses two more inference-form hooks: the
    attention's statistics (q^T k and the column norms, sums over pixels) are collected tile by tile through
    ``statistics_hook``, and the attention they give is then held fixed (``frozen_mixing``) while the tiles run.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.qkv_dwconv = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3)
        self.project_out = nn.Conv2d(channels, channels, 1)
        # inference form (fuse)
        self.query: Optional[nn.Sequential] = None
        self.key: Optional[nn.Sequential] = None
        self.value: Optional[nn.Sequential] = None
        self.statistics_hook: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None  # gets (B, H, W, C) q, k
        self.frozen_mixing: Optional[torch.Tensor] = None  # (B, C, C): project_out's weight @ attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.query is not None:
            return self._forward_fused(x)
        batch, channels, height, width = x.shape
        heads = self.num_heads
        qkv = self.qkv_dwconv(self.qkv(x)).reshape(batch, 3, heads, channels // heads, height * width)
        q, k, v = qkv.unbind(1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attention = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = (attention @ v).reshape(batch, channels, height, width)
        return self.project_out(out)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape

        def matrix(branch: nn.Module) -> torch.Tensor:  # (batch, H*W, C)
            return branch(x).permute(0, 2, 3, 1).reshape(batch, height * width, channels)

        q, k, v = matrix(self.query), matrix(self.key), matrix(self.value)
        if self.statistics_hook is not None:
            self.statistics_hook(q.reshape(batch, height, width, channels), k.reshape(batch, height, width, channels))
        if self.frozen_mixing is not None:
            mixing = self.frozen_mixing.to(v.dtype)
        elif q.dtype == torch.float16:  # 5 exponent bits: q^T k over a whole image may overflow unless normalised first
            mixing = self._mixing(F.normalize(q, dim=1).transpose(1, 2) @ F.normalize(k, dim=1))
        else:
            norm_q = q.norm(dim=1).clamp_min(1e-12)  # F.normalize's eps
            norm_k = k.norm(dim=1).clamp_min(1e-12)
            mixing = self._mixing((q.transpose(1, 2) @ k) / (norm_q[:, :, None] * norm_k[:, None, :]))
        # project_out(attention @ v) == v @ (W_out @ attention)^T + b_out, in matrix form
        out = torch.baddbmm(self.project_out.bias.view(1, 1, -1), v, mixing.transpose(1, 2))
        return out.reshape(batch, height, width, channels).permute(0, 3, 1, 2)

    def _mixing(self, cosine: torch.Tensor) -> torch.Tensor:
        """project_out's weight @ the block-diagonal attention, from the (B, C, C) cosine similarities, in their
        dtype (the network's on the forward path; float32 for statistics summed over tiles, whatever it runs in)."""
        attention = (cosine * self.logit_scale.to(cosine.dtype) + self.logit_mask.to(cosine.dtype)).softmax(dim=-1)
        return self.project_out.weight[:, :, 0, 0].to(cosine.dtype) @ attention

    def mixing_from_statistics(self, gram: torch.Tensor, square_norm_q: torch.Tensor,
                               square_norm_k: torch.Tensor) -> torch.Tensor:
        """The inference form's mixing matrix from sums over the image's pixels: ``gram`` = q^T k (B, C, C) and
        the squared column norms of q and k (B, C), as summed over tiles; the value ``frozen_mixing`` takes, in the
        statistics' dtype (float32 from exact tiles, so that fp16 sums cannot overflow and bf16 ones keep their
        precision)."""
        norm_q = square_norm_q.sqrt().clamp_min(1e-12)
        norm_k = square_norm_k.sqrt().clamp_min(1e-12)
        return self._mixing(gram / (norm_q[:, :, None] * norm_k[:, None, :]))

    @torch.no_grad()
    def fuse(self, affine: Optional[Affine]) -> None:
        if affine is not None:
            _fold_affine_into_conv(self.qkv, affine)
        channels = self.project_out.out_channels
        for index, name in enumerate(('query', 'key', 'value')):
            span = index * channels, (index + 1) * channels
            setattr(self, name, nn.Sequential(_slice_conv(self.qkv, *span), _slice_conv(self.qkv_dwconv, *span)))
        head = torch.arange(channels, device=self.temperature.device) // (channels // self.num_heads)
        same_head = head[:, None] == head[None, :]
        # per row: its head's temperature (C, 1); outside the head's block: -inf, so that softmax gives it 0
        self.register_buffer('logit_scale', self.temperature.detach().view(-1)[head][:, None], persistent=False)
        self.register_buffer('logit_mask', torch.zeros(channels, channels, device=head.device).masked_fill(
            ~same_head, float('-inf')), persistent=False)
        del self.qkv, self.qkv_dwconv


class GatedFeedForward(nn.Module):
    """Gated-Dconv feed-forward network (Restormer's GDFN): GELU(x1) * x2 after a depthwise 3x3."""

    takes_affine = True  # its first layer is a 1x1 conv, so a preceding norm's affine folds into it

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.project_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)

    @torch.no_grad()
    def fuse(self, affine: Optional[Affine]) -> None:
        if affine is not None:
            _fold_affine_into_conv(self.project_in, affine)


class ConvChannelMixer(nn.Module):
    """Dense-conv feed-forward (SAFMN's convolutional channel mixer): 3x3 conv to hidden, GELU, 1x1 back.

    Dense convs run near the CPU's arithmetic peak, where depthwise convs on wide tensors are memory-bound.
    """

    takes_affine = False  # its first layer is a zero-padded 3x3 conv: a preceding shift would not fold exactly

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.spatial = nn.Conv2d(channels, hidden, 3, padding=1)
        self.project_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(F.gelu(self.spatial(x)))


class LKSMBlock(nn.Module):
    """One block: spatial attention (MSMA), channel attention (MDTA), feed-forward; pre-norm residuals.

    MDTA and the feed-forward are optional (ablations); the modules that are absent have no weights.
    """

    def __init__(self, channels: int, lkcd_kernels: Sequence[Tuple[int, int]], num_heads: int,
                 ffn_expansion: float, *, norm: str = 'layernorm', ffn: str = 'gated_dconv',
                 mdta: bool = True) -> None:
        super().__init__()
        self.norm_spatial = _make_norm(norm, channels)
        self.msma = MSMA(channels, lkcd_kernels)
        self.norm_channel = _make_norm(norm, channels) if mdta else None
        self.mdta = MDTA(channels, num_heads) if mdta else None
        self.norm_ffn = _make_norm(norm, channels) if ffn != 'none' else None
        self.ffn = {'gated_dconv': GatedFeedForward, 'conv_mixer': ConvChannelMixer}[ffn](
            channels, ffn_expansion) if ffn != 'none' else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.msma(self.norm_spatial(x))
        if self.mdta is not None:
            x = x + self.mdta(self.norm_channel(x))
        if self.ffn is not None:
            x = x + self.ffn(self.norm_ffn(x))
        return x

    @torch.no_grad()
    def fuse(self) -> None:
        self.msma.fuse(_take_norm_affine(self, 'norm_spatial'))
        if self.mdta is not None:
            self.mdta.fuse(_take_norm_affine(self, 'norm_channel'))
        if self.ffn is not None and self.ffn.takes_affine:
            self.ffn.fuse(_take_norm_affine(self, 'norm_ffn'))


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


# Named configurations (LKSMN keyword arguments), so that every default LKSMN has had stays reachable by name.
NAMED_CONFIGS = {
    # the first default (until the design study, docs/design-study.md): 5 blocks, LayerNorm, Restormer's GDFN
    'v1': dict(num_feat=48, num_block=5, lkcd_kernels=((9, 2), (21, 3), (33, 4)), num_heads=4, ffn_expansion=2.0,
               norm='layernorm', ffn='gated_dconv', mdta=True, mlfa=True),
    # the default since the design study: 3 blocks, BatchNorm, SAFMN's conv channel mixer, LKCD groups that
    # share a dilation (so that their depthwise convs merge at inference)
    'v2': dict(num_feat=48, num_block=3, lkcd_kernels=((9, 3), (15, 3), (21, 3)), num_heads=4, ffn_expansion=1.95,
               norm='batchnorm', ffn='conv_mixer', mdta=True, mlfa=True),
}


# --- the network -------------------------------------------------------------------------------------------

def _check_choice(name: str, value: object, accepted: Sequence[object]) -> None:
    if type(value) is not type(accepted[0]) or value not in accepted:
        raise ValueError(f'LKSMN: {name} must be one of {list(accepted)}, got {value!r}')


def _check_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f'LKSMN: {name} must be a positive int, got {value!r}')


@ARCH_REGISTRY.register()
class LKSMN(nn.Module):
    """Large Kernel Spatial Modulation Network (reconstruction).

    From the paper's abstract: MSMA (convolutional modulation whose attention imitates a relevance
    matrix with multi-scale LKCD features) for spatial attention, MDTA for channel attention, MLFA to
    aggregate features of all depths, and the x4 budget of 253K parameters.

    Ours (the abstract is silent), chosen by an equal-budget study (docs/design-study.md): 3 blocks of 48
    channels; each block is pre-norm MSMA, MDTA and a feed-forward, with residuals; the norm is BatchNorm, which
    folds into the following convs at inference; the feed-forward is SAFMN's convolutional channel mixer (3x3
    conv to 93 channels, GELU, 1x1), dense convs that run near the CPU's peak; MSMA's attention branch is a 1x1
    conv and GELU, then three channel groups with LKCD of reach 9, 15 and 21, all with dilation 3 (5x5 local,
    3x3/5x5/7x7 dilated), so that the groups' depthwise convs merge into one at inference; MLFA fuses the
    shallow features with all block outputs (concat, 1x1, GELU, 3x3) plus a long skip; reconstruction is a
    3x3 conv and PixelShuffle. The default has 251,427 parameters at x4 (253K - 0.6%).

    In the study (demo recipe, 2000 iterations, 2 seeds, held-out photos, x4) this default gained +1.17 dB over
    bicubic against +1.08 dB for the first default (``NAMED_CONFIGS['v1']``: 5 blocks, LayerNorm, Restormer's
    gated-dconv feed-forward, LKCD reach 9/21/33 with dilations 2/3/4) and +0.64 dB for SAFMN; LayerNorm in
    its place gave +1.03 dB; without MLFA +0.81, without the feed-forward +0.84, without MDTA +1.12, with one
    LKCD group +1.15 (2 seeds each). At 5x the iterations v1 reached +1.46 dB and v2 +1.40 (one seed).
    benchmarks/speed.py: 1.5-2.2x faster than v1 on every inference path; its fastest fp32 CPU path (OpenVINO,
    268 ms at 320x180 -> 1280x720 on 2 cores) ties with SAFMN's (1.04x in one run, 0.98-1.06x timed alone).
    ``LKSMN(**NAMED_CONFIGS['v1'])`` builds the first default.

    Args:
        upscale: scale factor, 2, 3 or 4.
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        num_feat: feature channels C; divisible by len(lkcd_kernels) and by num_heads.
        num_block: number of blocks N.
        lkcd_kernels: (kernel size K, dilation d) of each MSMA group's LKCD; one pair is single-scale.
        num_heads: MDTA heads.
        ffn_expansion: hidden width of the feed-forward, as a multiple of num_feat.
        norm: 'layernorm' (channel LayerNorm), 'batchnorm' (folds away entirely at inference) or 'none'.
        ffn: 'gated_dconv' (Restormer's GDFN), 'conv_mixer' (SAFMN's 3x3-conv channel mixer) or 'none'.
        mdta: with MDTA channel attention in each block (False only for ablation).
        mlfa: with MLFA (False only for ablation: the last block's output plus the long skip).
    """

    def __init__(self, *, upscale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48,
                 num_block: int = 3, lkcd_kernels: Sequence[Sequence[int]] = ((9, 3), (15, 3), (21, 3)),
                 num_heads: int = 4, ffn_expansion: float = 1.95, norm: str = 'batchnorm',
                 ffn: str = 'conv_mixer', mdta: bool = True, mlfa: bool = True) -> None:
        super().__init__()
        _check_choice('upscale', upscale, SUPPORTED_SCALES)
        _check_choice('norm', norm, NORMS)
        _check_choice('ffn', ffn, FFNS)
        _check_choice('mdta', mdta, (True, False))
        _check_choice('mlfa', mlfa, (True, False))
        for name, value in (('num_in_ch', num_in_ch), ('num_out_ch', num_out_ch), ('num_feat', num_feat),
                            ('num_block', num_block), ('num_heads', num_heads)):
            _check_positive_int(name, value)
        kernels = tuple(tuple(pair) for pair in lkcd_kernels)
        if not kernels or any(len(pair) != 2 or type(pair[0]) is not int or type(pair[1]) is not int or pair[0] < 1
                              or pair[1] < 1 for pair in kernels):
            raise ValueError(f'LKSMN: lkcd_kernels must be a non-empty list of [kernel_size, dilation] pairs of '
                             f'positive ints, got {lkcd_kernels!r}')
        if num_feat % len(kernels) or (mdta and num_feat % num_heads):
            raise ValueError(f'LKSMN: num_feat ({num_feat}) must be divisible by the number of lkcd_kernels '
                             f'({len(kernels)}) and, with MDTA, by num_heads ({num_heads})')
        if not (isinstance(ffn_expansion, (int, float)) and ffn_expansion > 0):
            raise ValueError(f'LKSMN: ffn_expansion must be a positive number, got {ffn_expansion!r}')
        self.upscale = upscale
        self.num_in_ch = num_in_ch
        self.fused = False

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.blocks = nn.ModuleList(
            LKSMBlock(num_feat, kernels, num_heads, ffn_expansion, norm=norm, ffn=ffn, mdta=mdta)
            for _ in range(num_block))
        self.mlfa = MLFA(num_feat, num_block + 1) if mlfa else None
        self.upsampler = PixelShuffleUpsampler(num_feat, num_out_ch, upscale)
        # How many LR pixels away an output pixel depends on the input through the convolutions (MDTA's
        # whole-image statistics aside): the context a tile needs for exact tiled inference.
        block_radius = (max(lkcd.radius for lkcd in self.blocks[0].msma.lkcd) + (1 if mdta else 0)
                        + (1 if ffn != 'none' else 0))
        self.receptive_radius = 1 + num_block * block_radius + (1 if mlfa else 0) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_in_ch:
            raise ValueError(f'LKSMN: input x must be a 4D (batch, {self.num_in_ch}, height, width) tensor, '
                             f'got shape {tuple(x.shape)}')
        shallow = self.conv_first(x)
        levels: List[torch.Tensor] = [shallow]
        for block in self.blocks:
            levels.append(block(levels[-1]))
        deep = self.mlfa(levels) if self.mlfa is not None else levels[-1]
        return self.upsampler(deep + shallow)

    @torch.no_grad()
    def fuse_for_inference(self) -> 'LKSMN':
        """Turn this network, in place, into its exact inference form, and return it (in eval mode).

        Folds each normalisation's affine (and a BatchNorm entirely) into the convs that read it, merges
        MSMA's two input 1x1 convs and its groups' pointwise convs, and folds MDTA's output projection into
        its attention. Outputs match the training form to float rounding. Load weights *before* fusing: the
        fused network's state dict no longer matches checkpoints, and it is not meant to be trained.
        """
        if self.fused:
            return self.eval()
        self.eval()
        for block in self.blocks:
            block.fuse()
        self.fused = True
        return self

    def train(self, mode: bool = True) -> 'LKSMN':
        if mode and self.fused:
            raise RuntimeError('LKSMN: this network was fused for inference (fuse_for_inference) and cannot be '
                               'trained; build a new LKSMN and load the training checkpoint')
        return super().train(mode)
