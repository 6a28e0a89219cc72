"""Peak memory of one upscaling pass per input pixel, per backend and precision: the model behind ``--tile auto``.

Each measurement runs in a fresh process: the shipped x4 model is loaded for the backend, the process's peak
resident memory (VmHWM) is reset (``/proc/self/clear_refs``), one whole-image pass runs on a random image of
the given size, and the new peak minus the memory before the pass is the pass's cost. Two sizes per backend
give a slope (bytes per input pixel) and an intercept.

    .venv/bin/python benchmarks/upscale_memory.py --json lksmn_arch/inference/memory_model.json

The JSON it writes is the package's memory model (``lksmn_arch.inference.memory``), for the network shipped
(48 features, 3 blocks); other widths are scaled by their feature count there.
"""
import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

from report import save_report  # noqa: E402

# (backend, precision) pairs measured; OpenVINO and ONNX Runtime only where installed
CONFIGS = [('torch', 'fp32'), ('torch', 'bf16'), ('openvino', 'fp32'), ('openvino', 'bf16'), ('onnxruntime', 'fp32')]

CHILD = r'''
import json, sys, time
import numpy as np
from lksmn_arch.inference.files import build_upscaler
from lksmn_arch.inference.memory import peak_rss, reset_peak_rss, current_rss
backend, precision, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
upscaler = build_upscaler(None, backend=backend, precision=precision, device='cpu', progress=False, tile=0)
image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
upscaler.upscale_image(image[:16, :16])  # first-call allocations (thread pools, compiled kernels) out of the way
before = current_rss()
reset_peak_rss()
started = time.perf_counter()
out = upscaler.upscale_image(image)
seconds = time.perf_counter() - started
print(json.dumps({'before': before, 'peak': peak_rss(), 'seconds': seconds, 'out_shape': list(out.shape)}))
'''


def measure_one(backend: str, precision: str, height: int, width: int) -> Optional[Dict[str, Any]]:
    """One fresh-process measurement; None when the backend is not installed here."""
    done = subprocess.run([sys.executable, '-c', CHILD, backend, precision, str(height), str(width)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        print(f'  {backend} {precision} {height}x{width}: failed ({last[:200]})', flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result['pass_bytes'] = result['peak'] - result['before']
    return result


def measure(sizes: Sequence[int]) -> Dict[str, Any]:
    from lksmn_arch.inference.latency import runtime_installed
    from lksmn_arch.utils.cpus import cpu_label
    rows: List[Dict[str, Any]] = []
    for backend, precision in CONFIGS:
        if backend != 'torch' and not runtime_installed(backend):
            continue
        points = []
        for side in sizes:
            height, width = side, side * 4 // 3
            result = measure_one(backend, precision, height, width)
            if result is None:
                break
            points.append({'pixels': height * width, 'pass_bytes': result['pass_bytes'],
                           'seconds': round(result['seconds'], 3)})
            print(f'  {backend:11s} {precision} {height}x{width}: {result["pass_bytes"] / 2**20:8.1f} MiB, '
                  f'{result["seconds"]:.2f} s', flush=True)
        if len(points) < 2:
            continue
        (p0, b0), (p1, b1) = [(p['pixels'], p['pass_bytes']) for p in points[:1] + points[-1:]]
        slope = (b1 - b0) / (p1 - p0)
        rows.append({'backend': backend, 'precision': precision, 'points': points,
                     'bytes_per_pixel': round(slope, 1), 'intercept_bytes': max(0, round(b0 - slope * p0))})
    return {'cpu': cpu_label(), 'python': platform.python_version(), 'network': 'shipped x4 (48 features, 3 blocks)',
            'num_feat': 48, 'scale': 4, 'command': 'python benchmarks/upscale_memory.py ' + ' '.join(sys.argv[1:]),
            'rows': rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='upscale_memory.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', nargs='+', type=int, default=[192, 480],
                        help='input heights (width = 4/3 of it) measured per backend (default 192 480)')
    parser.add_argument('--json', type=Path, help='write the memory model here')
    args = parser.parse_args(argv)
    results = measure(args.sizes)
    save_report(results, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
