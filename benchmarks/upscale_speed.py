"""Whole-command speed and memory of ``lksmn-upscale``, next to the network's own compute and to SAFMN as
spandrel-based tools run it.

For each photo size (0.5, 3 and 12 megapixels, made from one real photo) and for a folder of photos of mixed
sizes, ``lksmn-upscale -i ... -o ...`` runs with default options in a child process; its wall time and peak
resident memory (``os.wait4``'s rusage of that child) are recorded. In this process, the same backend and tiling
the command chose run the same image with a timer around each network call only: the network's own compute.
SAFMN (spandrel's class, default width, random weights: speed does not depend on them) runs as a plain spandrel
script would: whole image, PyTorch fp32, channels first, under ``torch.inference_mode``, and tiled (512-pixel
tiles, as chaiNNer's default) when the whole image does not fit in half the free memory.

    .venv/bin/python benchmarks/upscale_speed.py --photo /work/openphotos/photos/test/lomiri_free_by_Peter_Nerlich.png \\
        --json benchmarks/results/upscale_speed_cpu.json --markdown benchmarks/results/upscale_speed_cpu.md

Run it on a quiet machine; the markdown goes verbatim into docs/upscaling.md.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

from report import save_report  # noqa: E402

SIZES_MP = (0.5, 3.0, 12.0)


def make_photo(source: np.ndarray, megapixels: float) -> np.ndarray:
    """``source`` resized (area when shrinking, cubic when enlarging) to about ``megapixels``, 4:3."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    shrink = width * height < source.shape[0] * source.shape[1]
    return cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def run_command(args: List[str]) -> Tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    stderr = child.stderr.read().decode(errors='replace') if child.stderr else ''
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f'upscale_speed.py: error: {" ".join(args)} failed: {stderr.strip()[-300:]}')
    return seconds, usage.ru_maxrss * 1024


def network_seconds(photo: Path) -> Dict[str, Any]:
    """The network's own time on ``photo`` through the backend and tiling lksmn-upscale chooses."""
    from lksmn_arch.inference.files import build_upscaler, read_image
    upscaler = build_upscaler(None, device='cpu', progress=False)
    img, _ = read_image(photo)
    image = img.astype(np.float32) / 255.0
    upscaler.upscale_image(image[:64, :64])  # warm-up
    calls: List[float] = []
    forward = upscaler._forward

    def timed(x):
        started = time.perf_counter()
        out = forward(x)
        calls.append(time.perf_counter() - started)
        return out

    upscaler._forward = timed
    if not hasattr(upscaler.model, 'parameters'):  # a runtime callable: Upscaler._run calls .model
        upscaler.model = timed
    tile = upscaler.tile_for(*image.shape[:2])
    upscaler.upscale_image(image)
    return {'network_s': round(sum(calls), 2), 'passes': len(calls), 'tile': tile,
            'backend': upscaler.backend_name}


def safmn_seconds(image: np.ndarray) -> Dict[str, Any]:
    """SAFMN x4 as a plain spandrel script runs it: whole image (or 512-pixel tiles when it would not fit)."""
    import torch

    import lksmn_arch  # noqa: F401  (the compatibility fixes spandrel's torchvision import needs here)
    from spandrel.architectures.SAFMN import SAFMN

    from lksmn_arch.inference.memory import available_memory
    model = SAFMN(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=4).eval()
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().unsqueeze(0) / 255.0
    with torch.inference_mode():
        model(x[..., :64, :64])
        whole_bytes = x.shape[-1] * x.shape[-2] * 2200  # SAFMN fp32, measured like ours: about 2 KiB per pixel
        tiled = whole_bytes > available_memory() / 2
        started = time.perf_counter()
        if not tiled:
            model(x)
        else:
            for top in range(0, x.shape[-2], 512):
                for left in range(0, x.shape[-1], 512):
                    model(x[..., max(0, top - 16):top + 528, max(0, left - 16):left + 528])
        return {'safmn_s': round(time.perf_counter() - started, 2), 'safmn_mode': 'tiled 512' if tiled else 'whole'}


def measure(photo_path: Path, folder_count: int, sizes: Sequence[float] = SIZES_MP) -> Dict[str, Any]:
    from lksmn_arch.utils.cpus import cpu_label
    source = cv2.imread(str(photo_path))
    if source is None:
        raise SystemExit(f'upscale_speed.py: error: cannot read --photo {photo_path}')
    command = [str(Path(sys.executable).parent / 'lksmn-upscale')]
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='upscale_speed_') as temp:
        temp_path = Path(temp)
        for megapixels in sizes:
            image = make_photo(source, megapixels)
            photo = temp_path / f'photo_{megapixels:g}mp.png'
            cv2.imwrite(str(photo), image)
            seconds, peak = run_command(command + ['-i', str(photo), '-o', str(temp_path / 'out'), '--quiet',
                                                   '--overwrite'])
            row = {'input': f'{image.shape[1]}x{image.shape[0]} ({megapixels:g} MP)', 'command_s': round(seconds, 2),
                   'peak_rss_gb': round(peak / 1e9, 2), **network_seconds(photo), **safmn_seconds(image)}
            rows.append(row)
            print(row, flush=True)
        folder = temp_path / 'folder'
        folder.mkdir()
        rng = np.random.default_rng(0)
        pixels = 0
        for i in range(folder_count):
            image = make_photo(source, float(rng.uniform(0.1, 2.0)))
            pixels += image.shape[0] * image.shape[1]
            cv2.imwrite(str(folder / f'{i:02d}.png'), image)
        seconds, peak = run_command(command + ['-i', str(folder), '-o', str(temp_path / 'folder_out'), '--quiet'])
        rows.append({'input': f'folder of {folder_count} photos, 0.1-2 MP ({pixels / 1e6:.1f} MP in all)',
                     'command_s': round(seconds, 2), 'peak_rss_gb': round(peak / 1e9, 2)})
        print(rows[-1], flush=True)
    return {'cpu': cpu_label(), 'python': platform.python_version(), 'photo': photo_path.name,
            'command': 'python benchmarks/upscale_speed.py ' + ' '.join(sys.argv[1:]), 'rows': rows}


def format_table(results: Dict[str, Any]) -> str:
    lines = [f'Measured on {results["cpu"]} (2 cores), from {results["photo"]}, x4, default options. Command: '
             f'`{results["command"]}`', '',
             '| input | lksmn-upscale (whole command) | peak memory | network alone (backend, tile) | '
             'command / network | SAFMN via spandrel, PyTorch |', '|---|---:|---:|---|---:|---:|']
    for r in results['rows']:
        if 'network_s' in r:
            tile = 'whole' if r['tile'] == 0 else f'tiles of {r["tile"]}'
            lines.append(f'| {r["input"]} | {r["command_s"]:.1f} s | {r["peak_rss_gb"]:.2f} GB | {r["network_s"]:.1f} s '
                         f'({r["backend"]}, {tile}) | {r["command_s"] / r["network_s"]:.2f}x | {r["safmn_s"]:.1f} s '
                         f'({r["safmn_mode"]}) |')
        else:
            lines.append(f'| {r["input"]} | {r["command_s"]:.1f} s | {r["peak_rss_gb"]:.2f} GB | | | |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='upscale_speed.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--photo', type=Path, required=True, help='a real photo the test images are made from')
    parser.add_argument('--folder-count', type=int, default=20, help='photos in the mixed folder (default 20)')
    parser.add_argument('--sizes', nargs='+', type=float, default=list(SIZES_MP),
                        help='photo sizes in megapixels (default 0.5 3 12)')
    parser.add_argument('--json', type=Path)
    parser.add_argument('--markdown', type=Path)
    args = parser.parse_args(argv)
    results = measure(args.photo, args.folder_count, args.sizes)
    save_report(results, args.json, format_table(results), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
