"""Progressive patches: small training patches first, larger ones towards the end (``train.progressive_patches``).

``progressive_patches: [[0, 16], [13410, 32]]`` trains on LR patches of 16x16 from the start and of 32x32 from
iteration 13,410 on. BasicSR's dataset crops patches of its ``gt_size``, which must be the largest stage's;
LKSMNModel crops each training batch down to the current stage's size, at a random place in each image. So the
dataset, its LMDB and its dataloader workers stay as BasicSR builds them, and a resumed run picks the stage of
its iteration. Small patches give many cheap iterations while the learning rate is high; large ones give the
network its full receptive field of context while the learning rate decays (the idea of Restormer's
progressive learning, here at a fixed batch size).
"""
from typing import Any, Dict, List, Sequence, Tuple

import torch

from lksmn_arch.errors import TrainingError

KEY = 'train.progressive_patches'


def read_patch_schedule(opt: Dict[str, Any]) -> List[Tuple[int, int]]:
    """The ``(start iteration, LR patch)`` stages of an option dict, checked; ``[]`` when it has none."""
    value = (opt.get('train') or {}).get('progressive_patches')
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise TrainingError(f'{KEY} must be a list of [start iteration, LR patch] pairs, got {value!r}')
    stages: List[Tuple[int, int]] = []
    for index, stage in enumerate(value):
        if not (isinstance(stage, (list, tuple)) and len(stage) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in stage)):
            raise TrainingError(f'{KEY}[{index}] must be [start iteration, LR patch], two whole numbers, '
                                f'got {stage!r}')
        start, patch = stage
        if patch < 1:
            raise TrainingError(f'{KEY}[{index}]: the LR patch must be at least 1, got {patch}')
        if index == 0 and start != 0:
            raise TrainingError(f'{KEY}[0] must start at iteration 0, got {start}')
        if index > 0 and start <= stages[-1][0]:
            raise TrainingError(f'{KEY}[{index}] starts at iteration {start}, not after the stage before it '
                                f'({stages[-1][0]})')
        stages.append((start, patch))
    gt_size = ((opt.get('datasets') or {}).get('train') or {}).get('gt_size')
    scale = opt.get('scale')
    largest = max(patch for _, patch in stages)
    if isinstance(gt_size, int) and isinstance(scale, int) and largest * scale != gt_size:
        raise TrainingError(f'{KEY}: the largest LR patch, {largest}, needs datasets.train.gt_size {largest * scale} '
                            f'at scale {scale}, got {gt_size} (the dataset crops the largest patches, the model '
                            f'the smaller ones from them)')
    return stages


def lr_patch_at(stages: Sequence[Tuple[int, int]], iteration: int) -> int:
    """The LR patch size of the stage that ``iteration`` falls in (stages as ``read_patch_schedule`` gives)."""
    return [patch for start, patch in stages if start <= iteration][-1]


def crop_batch(lq: torch.Tensor, gt: torch.Tensor, lr_patch: int, scale: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each image pair of a batch cropped to an LR patch of ``lr_patch`` (GT: ``lr_patch * scale``) at its own
    random place (torch's generator, which BasicSR seeds); the batch as it is when it is that size already."""
    height, width = lq.shape[-2:]
    if height <= lr_patch and width <= lr_patch:
        return lq, gt
    batch = lq.shape[0]
    tops = torch.randint(0, max(1, height - lr_patch + 1), (batch,)).tolist()
    lefts = torch.randint(0, max(1, width - lr_patch + 1), (batch,)).tolist()
    gt_patch = lr_patch * scale
    lq_crops = [lq[i, :, t:t + lr_patch, s:s + lr_patch] for i, (t, s) in enumerate(zip(tops, lefts))]
    gt_crops = [gt[i, :, t * scale:t * scale + gt_patch, s * scale:s * scale + gt_patch]
                for i, (t, s) in enumerate(zip(tops, lefts))]
    return torch.stack(lq_crops), torch.stack(gt_crops)
