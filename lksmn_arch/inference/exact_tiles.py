"""Tiled LKSMN inference that reproduces the whole-image output (to float rounding).

Everything in LKSMN is a convolution except MDTA, whose channel attention is built from sums over all the
pixels of its input: the Gram matrix q^T k and the norms of q's and k's columns. A tile that sees only its
own region therefore gets a slightly different attention, which is why plain tiling (``Upscaler``'s
cross-faded tiles) differs from the whole image. Those sums can be added up over tiles instead:

1. for each MDTA in order, run every tile up to that MDTA (the ones before it already fixed), add its q^T k
   and squared norms over the tile's own core pixels, and stop the pass there; the totals give the
   whole-image attention, which is then held fixed (``MDTA.frozen_mixing``);
2. with every attention fixed the network is purely convolutional, so each tile, read with
   ``LKSMN.receptive_radius`` pixels of context, gives exactly the whole image's output on its core.

Peak memory stays that of one tile. The price is the partial passes (three for the default network) and the
wider context: measured 2.7x the time of cross-faded tiles at tiles of 128 and 2.1x at 256, about twice
the whole image's time (``benchmarks/tiling_psnr.py``, ``benchmarks/results/exact_tiles_cpu*.json``).
"""
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

Tile = Tuple[int, int, int, int]  # core_start, core_end, read_start, read_end (one axis, LR pixels)


class _PassDone(Exception):
    """Raised by the statistics hook: the rest of this partial pass is not needed."""


def mdta_modules(model: nn.Module) -> List[nn.Module]:
    """The network's MDTA modules in forward order (those with the inference-form hooks)."""
    from lksmn_arch.archs.lksmn_arch import MDTA
    return [module for module in model.modules() if isinstance(module, MDTA)]


def check_exact_tiling(model: object) -> int:
    """The context (LR pixels) exact tiles need; ValueError for a network that cannot tile exactly."""
    from lksmn_arch.archs.lksmn_arch import LKSMN
    if not isinstance(model, LKSMN):
        raise ValueError(f'exact tiles need a PyTorch LKSMN network, not {type(model).__name__} (an exported '
                         'ONNX/OpenVINO graph has no hooks for them); use the torch backend, or blended tiles')
    if not model.fused:
        raise ValueError('exact tiles need the LKSMN in its inference form (fuse=True, the default)')
    return model.receptive_radius


def exact_tiled_forward(model: nn.Module, x: torch.Tensor, rows: List[Tile], cols: List[Tile], scale: int,
                        run: Callable[[torch.Tensor], torch.Tensor], progress: bool = True) -> torch.Tensor:
    """The whole-image output of ``model`` on ``x`` (N, C, H, W; CPU float32), computed tile by tile.

    ``rows``/``cols`` are the tiles along each axis (``upscaler._axis_tiles`` with ``model.receptive_radius`` of
    context); ``run`` runs the network on one CPU float32 tile and returns its CPU float32 output.
    """
    mdtas = mdta_modules(model)
    passes = len(mdtas) + 1
    bar = tqdm(total=passes * len(rows) * len(cols), desc='exact tiles', unit='tile', leave=False,
               disable=not progress or len(rows) * len(cols) == 1)
    try:
        for mdta in mdtas:
            statistics = _whole_image_statistics(mdta, x, rows, cols, run, bar)
            device = mdta.project_out.weight.device
            with torch.no_grad():  # in float32, whatever the network runs in (MDTA casts it to its own dtype)
                mdta.frozen_mixing = mdta.mixing_from_statistics(
                    *(total.to(device=device, dtype=torch.float32) for total in statistics))
        out: Optional[torch.Tensor] = None
        for (top, bottom, left, right), (core_y0, core_x0), tile in _tiles(x, rows, cols):
            piece = run(tile)
            if out is None:
                out = torch.empty(x.shape[0], piece.shape[1], x.shape[-2] * scale, x.shape[-1] * scale)
            core_y1, core_x1 = core_y0 + bottom - top, core_x0 + right - left
            out[..., core_y0 * scale:core_y1 * scale, core_x0 * scale:core_x1 * scale] = piece[
                ..., top * scale:bottom * scale, left * scale:right * scale]
            bar.update()
        return out
    finally:
        bar.close()
        for mdta in mdtas:
            mdta.frozen_mixing = None
            mdta.statistics_hook = None


def _tiles(x: torch.Tensor, rows: List[Tile], cols: List[Tile]) -> Iterator[Tuple[Tuple[int, int, int, int],
                                                                              Tuple[int, int], torch.Tensor]]:
    """Per tile: its core in the tile's own pixels (top, bottom, left, right), the core's origin in the image
    (row, column), and the tile as read (core and context)."""
    for core_y0, core_y1, y0, y1 in rows:
        for core_x0, core_x1, x0, x1 in cols:
            yield ((core_y0 - y0, core_y1 - y0, core_x0 - x0, core_x1 - x0), (core_y0, core_x0),
                   x[..., y0:y1, x0:x1])


def _whole_image_statistics(mdta: nn.Module, x: torch.Tensor, rows: List[Tile], cols: List[Tile],
                            run: Callable[[torch.Tensor], torch.Tensor],
                            bar: tqdm) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q^T k and the squared column norms of q and k at ``mdta``, summed (float64) over every tile's core."""
    totals: List[Optional[torch.Tensor]] = [None, None, None]
    core = [0, 0, 0, 0]  # the current tile's core, in its own pixels: top, bottom, left, right

    def collect(q: torch.Tensor, k: torch.Tensor) -> None:
        top, bottom, left, right = core
        q = q[:, top:bottom, left:right].reshape(q.shape[0], -1, q.shape[-1]).float()
        k = k[:, top:bottom, left:right].reshape(k.shape[0], -1, k.shape[-1]).float()
        sums = (q.transpose(1, 2) @ k, q.square().sum(1), k.square().sum(1))
        for index, value in enumerate(sums):
            value = value.cpu().double()
            totals[index] = value if totals[index] is None else totals[index] + value
        raise _PassDone

    mdta.statistics_hook = collect
    try:
        for own_core, _, tile in _tiles(x, rows, cols):
            core[:] = own_core
            try:
                run(tile)
            except _PassDone:
                pass
            else:
                raise RuntimeError('exact tiles: the MDTA statistics hook was not reached')
            bar.update()
    finally:
        mdta.statistics_hook = None
    return totals[0], totals[1], totals[2]
