"""Whole-image and tiled super-resolution inference, with optional x8 self-ensemble (TTA).

    upscaler = Upscaler.from_checkpoint('net_g.pth', tile=256, tile_pad=32)
    sr = upscaler.upscale_image(rgb_float32)       # HxW, HxWx1, HxWx3 or HxWx4 in [0, 1]
"""
import copy
import math
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lksmn_arch.archs.complexity import resolve_device
from lksmn_arch.inference.choices import ALPHA_MODES

PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}

# A network: anything that maps a (N, C, H, W) float tensor to (N, C_out, H*s, W*s). An nn.Module is moved to
# the device and precision; any other callable (the ONNX Runtime wrapper) gets CPU float32 tensors.
Network = Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


def _axis_tiles(length: int, tile: int, pad: int) -> List[Tuple[int, int, int, int]]:
    """Split [0, length) into n = ceil(length / tile) near-equal cores, each read with at least ``pad`` of context.

    Every read window has the same length (the largest core plus 2 * pad, within the image): a window at the
    border is shifted inward instead of cut short, so that all tiles have one shape, which a backend that
    compiles per shape (OpenVINO) compiles, and holds memory for, once. Returns (core_start, core_end,
    read_start, read_end) per tile.
    """
    count = max(1, math.ceil(length / tile))
    bounds = [round(i * length / count) for i in range(count + 1)]
    read = min(length, max(b - a for a, b in zip(bounds, bounds[1:])) + 2 * pad)
    tiles = []
    for start, end in zip(bounds, bounds[1:]):
        read_start = min(max(0, start - pad), length - read)
        tiles.append((start, end, read_start, read_start + read))
    return tiles


def _ramp(t: torch.Tensor) -> torch.Tensor:
    """Raised-cosine ramp from 0 (t <= 0) to 1 (t >= 1); ramp(t) + ramp(1 - t) == 1, so cross-fades sum to 1."""
    return 0.5 - 0.5 * torch.cos(math.pi * t.clamp(0.0, 1.0))


def _axis_weight(read_start: int, read_end: int, core_start: int, core_end: int, length: int, pad: int,
                 scale: int) -> torch.Tensor:
    """Blending weight along one axis of one tile's output, in output pixels.

    Where a neighbour exists, the weight cross-fades over the 2*pad-wide band that both tiles read (centred on
    the core boundary), and is zero beyond it (context read only because the window was shifted inward at the
    border); at the image border it stays 1. Every pixel gets a positive total weight from the tile whose core
    holds it.
    """
    centres = torch.arange(read_start * scale, read_end * scale, dtype=torch.float64) + 0.5
    weight = torch.ones_like(centres)
    band = 2 * pad * scale
    if pad > 0:
        if core_start > 0:
            weight *= _ramp((centres - (core_start - pad) * scale) / band)
        if core_end < length:
            weight *= _ramp(((core_end + pad) * scale - centres) / band)
    return weight.float()


def _dihedral(x: torch.Tensor, index: int) -> torch.Tensor:
    """The index-th of the 8 flips/rotations of the last two dimensions (index 0 is the identity)."""
    if index & 4:
        x = x.transpose(-2, -1)
    if index & 2:
        x = x.flip(-2)
    if index & 1:
        x = x.flip(-1)
    return x


def _dihedral_inverse(x: torch.Tensor, index: int) -> torch.Tensor:
    if index & 1:
        x = x.flip(-1)
    if index & 2:
        x = x.flip(-2)
    if index & 4:
        x = x.transpose(-2, -1)
    return x


AUTO = 'auto'
TILE_COST_LIMIT = 64.0  # --tile 1 with the default padding would be 4,225x the work of the whole image


def check_tiling(tile: Union[int, str], tile_pad: int) -> float:
    """How many times the image's pixels the network processes with these tiles (1.0 for whole-image and for
    'auto', which sizes its tiles itself); ValueError for a value that is not 'auto' or an int >= 0, or tiles so
    small that their padding makes it more than 64x."""
    if tile != AUTO and (type(tile) is not int or tile < 0):
        raise ValueError(f"--tile must be 'auto', or an int >= 0 (0: whole image), got {tile!r}")
    if type(tile_pad) is not int or tile_pad < 0:
        raise ValueError(f'--tile-pad must be an int >= 0, got {tile_pad!r}')
    if not tile or tile == AUTO:
        return 1.0
    cost = ((tile + 2 * tile_pad) / tile) ** 2
    if cost > TILE_COST_LIMIT:
        raise ValueError(f'--tile {tile} with --tile-pad {tile_pad} would make the network process about '
                         f"{cost:.0f}x the image's pixels (each tile is read with its padding); use a --tile of 128 "
                         'or more (under 2x the work), or 0 for the whole image')
    return cost


class Upscaler:
    """Runs a super-resolution network on whole images or on overlapping tiles.

    ``tile='auto'`` (the default) runs the whole image when its pass fits in the memory this process may use
    (``max_memory`` caps it) and otherwise tiles sized to fit (``tile_for``). ``tile=0`` runs the whole image in
    one pass (refused when it cannot fit). ``tile=T`` splits the image into near-equal cores of at most
    T x T input pixels; each core is read with ``tile_pad`` pixels of context on every side (so the network
    sees at most (T + 2*tile_pad)^2 pixels, which bounds the peak memory of the network by the tile size, not
    the image size), and the tiles' outputs are cross-faded with a raised-cosine window over the 2*tile_pad
    band that neighbours share, so that no seam shows. The result is accumulated on the CPU, so GPU memory
    holds only one tile. A tile at least as large as the image gives exactly the whole-image output.

    Cross-faded tiles are *not* identical to whole-image output, even with a large ``tile_pad``: LKSMN's MDTA
    attends over every pixel of its input (channel attention whose statistics cover the whole input), so
    each tile sees statistics of its own region rather than of the whole image. The difference is small
    (see tests/test_inference.py and benchmarks/tiling_psnr.py) but not zero. ``exact_tiles=True`` removes it:
    MDTA's statistics are summed over the tiles first, in partial passes, and each tile is then read with the
    network's whole receptive field as context (``lksmn_arch.inference.exact_tiles``), so the output equals
    the whole image's to float rounding, for about twice the compute of cross-faded tiles (PyTorch LKSMN only).

    ``tta=True`` averages the outputs of the 8 flips/rotations of each tile (x8 self-ensemble; 8x the time).

    Precision: 'fp32', 'bf16' (CPU and CUDA), 'fp16' (CUDA only: on the CPU it is refused with a ValueError
    rather than silently falling back, so that a requested precision is the one that runs). The network is
    cast to that precision and moved to the device in place (an LKSMN is first copied and fused, so the caller's
    network keeps its training form). Outputs are float32 on the CPU.

    Args:
        model: an nn.Module (moved/cast in place) or a callable on CPU float32 tensors (ONNX Runtime's
            ``OnnxModel``, OpenVINO's ``OpenVinoModel``; ``precision`` must then be the callable's own).
        scale: the network's scale factor; read from ``model.upscale`` or ``model.scale`` when omitted.
        tile: 'auto' (sized to the memory), 0 (whole image) or an input tile size in pixels.
        tile_pad: context pixels around each tile, and half the width of the cross-fade band.
        device: 'auto', 'cpu', 'cuda' (or a torch.device); only for nn.Module networks.
        precision: 'fp32', 'fp16' or 'bf16'.
        tta: x8 self-ensemble.
        progress: show a tqdm bar over tiles when an image has more than one.
        fuse: run a network that has ``fuse_for_inference`` (LKSMN) in its exact inference form (fused in
            place; the default, and the fastest: see benchmarks/speed.py).
        channels_last: run an nn.Module in channels_last memory format (the default; faster on CPU and GPU
            for LKSMN's convolutions).
        compile: run an nn.Module through ``torch.compile`` (with freezing). Each new input size compiles
            once (seconds to a minute on a CPU), so it pays off for many images or tiles of one size.
        max_memory: with ``tile='auto'``, the bytes the passes and the output may take together (default: the
            output, plus ``memory.DEFAULT_PASS_BUDGET`` for the passes, within what is free).
        exact_tiles: tiles that reproduce the whole-image output (``tile_pad`` is then the network's receptive
            radius, not the argument); needs a PyTorch LKSMN, without ``compile``.
    """

    def __init__(self, model: Network, scale: Optional[int] = None, *, tile: Union[int, str] = AUTO,
                 tile_pad: int = 32, device: Union[str, torch.device] = 'auto', precision: str = 'fp32',
                 tta: bool = False, progress: bool = True, fuse: bool = True, channels_last: bool = True,
                 compile: bool = False, max_memory: Optional[int] = None, exact_tiles: bool = False) -> None:
        check_tiling(tile, tile_pad)
        if exact_tiles and compile:
            raise ValueError('exact tiles run Python hooks inside the network: use them without compile')
        self.max_memory = max_memory
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {list(PRECISIONS)}, got {precision!r}')
        scale = scale if scale is not None else getattr(model, 'upscale', getattr(model, 'scale', None))
        if type(scale) is not int or scale < 1:
            raise ValueError(f'scale must be a positive int (pass scale= for a model without .upscale), got {scale!r}')
        self.scale = scale
        self.tile = tile
        self.tile_pad = tile_pad
        self.tta = tta
        self.progress = progress
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.in_channels = int(getattr(model, 'num_in_ch', getattr(model, 'in_channels', 3)))
        config = getattr(model, 'config', None) or {}
        self.num_feat = int(getattr(model, 'num_feat', config.get('num_feat', 48)))
        self.backend_name = getattr(model, 'backend', 'torch')  # the runtime wrappers name theirs
        if isinstance(model, nn.Module):
            self.device = device if isinstance(device, torch.device) else resolve_device(device)
            if self.dtype == torch.float16 and self.device.type != 'cuda':
                raise ValueError(f"precision 'fp16' needs a CUDA device, but the device is {self.device} "
                                 "(use 'bf16' or 'fp32' on the CPU)")
            if fuse and callable(getattr(model, 'fuse_for_inference', None)):
                model = copy.deepcopy(model).fuse_for_inference()  # the caller's network stays trainable
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            self.model: Network = model.to(device=self.device, dtype=self.dtype,
                                           memory_format=self.memory_format).eval()
            self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
            if compile:
                from lksmn_arch.inference.latency import compile_for_inference
                self._forward = compile_for_inference(self.model)
        else:
            runs_in = getattr(model, 'precision', 'fp32')
            if precision != runs_in or compile:
                raise ValueError(f"precision {precision!r} and compile are for PyTorch networks; this network "
                                 f"({type(model).__name__}) runs in {runs_in}")
            self.device = torch.device('cpu')
            self.model = self._forward = model
        if exact_tiles:  # an exported graph (no hooks) or an unfused network is refused here
            from lksmn_arch.inference.exact_tiles import check_exact_tiling
            self.tile_pad = check_exact_tiling(self.model)
            check_tiling(tile, self.tile_pad)  # the cost of tiles read with the receptive radius as context
        self.exact_tiles = exact_tiles

    @classmethod
    def from_checkpoint(cls, path: Optional[str] = None, **kwargs: object) -> 'Upscaler':
        """An Upscaler for the LKSMN checkpoint at ``path`` (see ``build_model_from_checkpoint``).

        Without ``path``, the model shipped in the package for ``scale`` (default 4) runs
        (``lksmn_arch.weights.shipped.default_model``; ShippedModelError names the scales that have one).
        """
        from lksmn_arch.utils.checkpoint import build_model_from_checkpoint
        if path is None:
            from lksmn_arch.weights.shipped import default_model
            path = str(default_model(kwargs.get('scale') or 4).path)
        model, _ = build_model_from_checkpoint(path)
        return cls(model, **kwargs)

    # --- tensors -------------------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """``run`` (default: one network pass) on a CPU float32 tensor, TTA included; returns CPU float32."""
        run = run or self._pass
        transforms = range(8) if self.tta else (0,)
        total = None
        for index in transforms:
            out = _dihedral_inverse(run(_dihedral(x, index).contiguous()), index)
            total = out if total is None else total + out
        return total if len(transforms) == 1 else total / len(transforms)

    def _pass(self, x: torch.Tensor) -> torch.Tensor:
        """One network pass on a CPU float32 tensor; returns a CPU float32 tensor."""
        with torch.no_grad():
            if isinstance(self.model, nn.Module):
                inp = x.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
                return self._forward(inp).float().cpu().contiguous()
            return self.model(x)

    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale a (N, C, H, W) or (C, H, W) float tensor; returns float32 on the CPU, not clamped."""
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f'expected a (N, C, H, W) or (C, H, W) tensor, got shape {tuple(x.shape)}')
        x = x.detach().float().cpu()
        height, width = x.shape[-2:]
        tile = self.tile_for(height, width, batch=x.shape[0])
        if tile == 0 or (height <= tile and width <= tile):
            out = self._run(x)
        elif self.exact_tiles:
            out = self._run(x, lambda image: self._run_exact_tiled(image, tile))
        else:
            out = self._run_tiled(x, tile)
        return out.squeeze(0) if squeeze else out

    def tile_for(self, height: int, width: int, batch: int = 1) -> int:
        """The tile an image of this size runs with: ``tile`` as given, or with 'auto' the whole image (0) when
        its pass fits in the memory this process may use (and ``max_memory``), else the largest tile that fits
        (``lksmn_arch.inference.memory``). With ``tile=0`` an image that cannot fit is refused
        (InsufficientMemoryError) rather than left to the kernel's out-of-memory killer."""
        from lksmn_arch.inference import memory
        kind = dict(backend=self.backend_name, precision=self.precision, num_feat=self.num_feat,
                    device_type=self.device.type, max_memory=self.max_memory)
        if self.tile == AUTO:
            return memory.choose_tile(height, width * batch, self.scale, tile_pad=self.tile_pad, **kind)
        if self.tile == 0:
            memory.check_whole_image_fits(height, width * batch, self.scale, **kind)
        return self.tile

    def _run_exact_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Exact tiles of one image (TTA, if on, is applied around this: each flip is its own whole image)."""
        from lksmn_arch.inference.exact_tiles import exact_tiled_forward
        height, width = x.shape[-2:]
        rows = _axis_tiles(height, tile, self.tile_pad)
        cols = _axis_tiles(width, tile, self.tile_pad)
        return exact_tiled_forward(self.model, x, rows, cols, self.scale, self._pass, progress=self.progress)

    def _run_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Cross-faded tiles, TTA per tile."""
        height, width = x.shape[-2:]
        s = self.scale
        rows = _axis_tiles(height, tile, self.tile_pad)
        cols = _axis_tiles(width, tile, self.tile_pad)
        out: Optional[torch.Tensor] = None
        norm_y = torch.zeros(height * s)
        norm_x = torch.zeros(width * s)
        for r in rows:
            norm_y[r[2] * s:r[3] * s] += _axis_weight(r[2], r[3], r[0], r[1], height, self.tile_pad, s)
        for c in cols:
            norm_x[c[2] * s:c[3] * s] += _axis_weight(c[2], c[3], c[0], c[1], width, self.tile_pad, s)
        bar = tqdm(total=len(rows) * len(cols), desc='tiles', unit='tile', leave=False,
                   disable=not self.progress or len(rows) * len(cols) == 1)
        try:
            for core_y0, core_y1, y0, y1 in rows:
                weight_y = _axis_weight(y0, y1, core_y0, core_y1, height, self.tile_pad, s)
                for core_x0, core_x1, x0, x1 in cols:
                    weight_x = _axis_weight(x0, x1, core_x0, core_x1, width, self.tile_pad, s)
                    piece = self._run(x[..., y0:y1, x0:x1])
                    if out is None:
                        out = torch.zeros(x.shape[0], piece.shape[1], height * s, width * s)
                    out[..., y0 * s:y1 * s, x0 * s:x1 * s] += piece * (weight_y[:, None] * weight_x[None, :])
                    bar.update()
        finally:
            bar.close()
        out /= norm_y[:, None] * norm_x[None, :]
        return out

    # --- images --------------------------------------------------------------------------------------------

    def upscale_image(self, img: np.ndarray, alpha: str = 'network') -> np.ndarray:
        """Upscale an HxW (gray), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) float image in [0, 1].

        Returns the same layout, float32, clipped to [0, 1]. Gray is replicated to RGB for a 3-channel
        network and the output's channels averaged back. Alpha ('network', the default) goes through the
        network as a 3-channel replica, which keeps its edges as sharp as the colour's; 'bicubic' resizes it
        with OpenCV's bicubic interpolation (faster: one network pass instead of two).
        """
        if alpha not in ALPHA_MODES:
            raise ValueError(f'alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}')
        if self.in_channels != 3:
            raise ValueError(f'upscale_image needs a 3-channel (RGB) network, this one takes {self.in_channels}')
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 2:
            return self._upscale_gray(img)
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise ValueError(f'expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {img.shape}')
        if img.shape[2] == 1:
            return self._upscale_gray(img[..., 0])[..., None]
        rgb = self._upscale_rgb(img[..., :3])
        if img.shape[2] == 3:
            return rgb
        if alpha == 'network':
            alpha_out = self._upscale_gray(img[..., 3])
        else:
            import cv2
            height, width = img.shape[:2]
            alpha_out = np.clip(cv2.resize(img[..., 3], (width * self.scale, height * self.scale),
                                           interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
        return np.concatenate([rgb, alpha_out[..., None]], axis=2)

    def _upscale_rgb(self, rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        out = self.upscale_tensor(x).clamp_(0.0, 1.0)
        return out.permute(1, 2, 0).numpy()

    def _upscale_gray(self, gray: np.ndarray) -> np.ndarray:
        rgb = self._upscale_rgb(np.repeat(gray[..., None], 3, axis=2))
        return rgb.mean(axis=2)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical arrays."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


__all__ = ['Upscaler', 'PRECISIONS', 'ALPHA_MODES', 'psnr']
