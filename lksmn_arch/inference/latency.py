"""Inference paths of a super-resolution network, and latency timed the honest way.

A *path* is how a network runs: eager PyTorch in NCHW or channels_last, ``torch.compile`` (with
freezing), ONNX Runtime, each in fp32 or bf16. ``make_forward`` builds one; an LKSMN is put in its
inference form (``fuse_for_inference``) first, as ``lksmn-upscale`` runs it. ``time_interleaved`` times
several forwards in round-robin rounds in one process, under the default allocator (settled first, see
``settle_allocator``) and no other instrumentation, so that a slow phase of the machine hits every
candidate alike.

    best = fastest_latency({'LKSMN': lksmn, 'SAFMN': safmn}, input_shape=(1, 3, 180, 320))
    # {'LKSMN': ('compile', 0.41), 'SAFMN': ('compile', 0.30)}   (path, median seconds)
"""
import copy
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lksmn_arch.errors import first_line

Forward = Callable[[torch.Tensor], torch.Tensor]

# fp32 paths first; a 'bf16 ' prefix runs the same path in bfloat16 (PyTorch paths only).
FP32_PATHS = ('eager', 'channels_last', 'compile', 'compile_channels_last', 'onnxruntime')
BF16_PATHS = ('bf16 channels_last', 'bf16 compile_channels_last')
# OpenVINO (CPU; when the ``openvino`` package is installed): the ONNX export compiled for each input shape
# at its first call, with fp32 or bf16 inference precision (``lksmn_arch.inference.export.OpenVinoModel``).
OPENVINO_PATHS = ('openvino', 'bf16 openvino')
ALL_PATHS = FP32_PATHS + BF16_PATHS + OPENVINO_PATHS
# The packages each runtime needs: itself, and onnx for the export it runs.
RUNTIME_MODULES = {'onnxruntime': ('onnxruntime', 'onnx'), 'openvino': ('openvino', 'onnx')}


def runtime_installed(runtime: str) -> bool:
    """Whether ``runtime`` ('onnxruntime' or 'openvino') and the onnx package its export needs can be imported."""
    return all(importlib.util.find_spec(module) is not None for module in RUNTIME_MODULES[runtime])


def inference_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as it should run for inference: eval mode, and fused when it can be."""
    model = copy.deepcopy(model).eval()
    fuse = getattr(model, 'fuse_for_inference', None)
    return fuse() if callable(fuse) else model


def _precision(path: str) -> Tuple[torch.dtype, str]:
    if path.startswith('bf16 '):
        return torch.bfloat16, path[len('bf16 '):]
    return torch.float32, path


def make_forward(model: nn.Module, path: str, *, device: torch.device = torch.device('cpu'),
                 threads: Optional[int] = None, workdir: Optional[Path] = None,
                 fuse: bool = True) -> Forward:
    """A callable running ``model`` on ``path``; it takes an fp32 NCHW tensor on ``device``.

    The input's conversion (layout, dtype) happens inside the callable, so it is timed as a user pays it.
    ``torch.compile`` paths compile on the first call (with inductor's freezing, which folds weights into
    the graph; valid for inference only). The ONNX path exports to ``workdir`` and runs on ONNX Runtime's
    CPU provider (CUDA provider on a CUDA device). Raises ValueError for an unknown path.
    """
    dtype, base = _precision(path)
    if path not in ALL_PATHS:
        raise ValueError(f'unknown path {path!r}; choose from {list(ALL_PATHS)}')
    net = inference_form(model) if fuse else copy.deepcopy(model).eval()
    if base in ('openvino', 'onnxruntime'):
        from lksmn_arch.inference.export import OnnxModel, export_onnx
        folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix='lksmn_latency_'))
        target = folder / f'{type(model).__name__}_{id(net)}_{base}.onnx'
        if base == 'openvino':
            try:
                onnx_path: Optional[Path] = export_onnx(net.cpu(), target)
            except RuntimeError:
                onnx_path = None
            return _openvino_forward(net.cpu().float(), onnx_path, dtype, threads)
        session = OnnxModel(export_onnx(net.cpu(), target), device=device.type,
                            threads=threads if device.type == 'cpu' else None)
        return lambda x: session(x)
    channels_last = base.endswith('channels_last')
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, dtype=dtype, memory_format=memory_format)

    def run(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(dtype=dtype, memory_format=memory_format))

    return compile_for_inference(run) if base.startswith('compile') else run


def _openvino_forward(net: nn.Module, onnx_path: Optional[Path], dtype: torch.dtype,
                      threads: Optional[int]) -> Forward:
    """OpenVINO's CPU plugin, compiled for each new input shape (``OpenVinoModel``, as ``lksmn-upscale`` runs
    it) from the ONNX export; where that export cannot run a shape (SAFMN's adaptive pooling exports for the
    tracing size only), from ``openvino.convert_model`` of the network at that shape, so that a peer still
    gets OpenVINO's best."""
    import openvino as ov

    from lksmn_arch.inference.export import OpenVinoModel, openvino_compile, openvino_config, openvino_infer

    precision = 'bf16' if dtype == torch.bfloat16 else 'fp32'
    exported = None
    if onnx_path is not None:
        try:
            exported = OpenVinoModel(onnx_path, precision=precision, threads=threads)
        except Exception:  # noqa: BLE001  (OpenVINO's error types; the converted route below still runs)
            exported = None
    config = openvino_config(precision, threads)
    converted: Dict[Tuple[int, ...], Tuple[object, Tuple[int, ...]]] = {}  # shape: (request, output shape)

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if exported is not None and shape not in converted:
            try:
                return exported(x)
            except Exception:  # noqa: BLE001
                pass
        if shape not in converted:
            model = ov.convert_model(net, example_input=x.detach().cpu().float())
            converted[shape] = openvino_compile(ov.Core(), model, shape, config)
        return openvino_infer(*converted[shape], x)

    return run


def compile_for_inference(function: Forward) -> Forward:
    """``torch.compile(function)`` with inductor's freezing (weights folded into the graph: inference only).

    Freezing is read when a graph is compiled, which happens at a call, so every call runs under it.
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    # Every compiled path of a benchmark traces the same code objects (this module's closures, each network
    # class's forward); past dynamo's recompile limit (8) later ones would silently run eager.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
    compiled = torch.compile(function)

    def run_compiled(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return compiled(x)
    return run_compiled


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# glibc malloc's dynamic mmap threshold rises to the size of the largest mmapped block freed so far, up to
# this ceiling, and the heap's trim threshold to twice that. Until it has, every forward of a network that
# frees more than twice its largest tensor returns that memory to the OS and page-faults it back next call.
GLIBC_MMAP_THRESHOLD_CEILING = 32 << 20


def settle_allocator() -> None:
    """Put glibc malloc in the state a process reaches after its first large image, so that a timing does not
    depend on what the process ran before: one block just under the ceiling, allocated, touched and freed.

    Without it, SAFMN's torch.compile path page-faulted ~20K pages (80 MB) per call in a fresh process and took
    10-15% longer than in a process that had run other networks; with it, fresh and busy processes agree.
    Still the default allocator: no mallopt, nothing a user's long-running process would not reach itself.
    """
    block = torch.empty(GLIBC_MMAP_THRESHOLD_CEILING - (1 << 16), dtype=torch.uint8)
    block.fill_(0)
    del block


def time_interleaved(forwards: Dict[str, Forward], x: torch.Tensor, *, rounds: int = 10, warmup: int = 3,
                     pause: float = 0.0, on_progress: Optional[Callable[[str], None]] = None
                     ) -> Tuple[Dict[str, List[float]], Dict[str, float]]:
    """Seconds per call of each forward, timed in ``rounds`` round-robin rounds after ``warmup`` rounds.

    ``pause`` seconds of idling precede each call, untimed: thread pools that spin-wait after a call
    (OpenMP's, ONNX Runtime's) go idle before the next network starts, so no row pays for the previous
    row's spinning threads, and a row timed alone meets the same conditions as in the interleaved rounds.

    Returns (times per name, seconds of each forward's first call: compilation, allocator warm-up). A
    forward that raises is dropped from later rounds and reported in its times as an empty list.
    """
    settle_allocator()
    times: Dict[str, List[float]] = {name: [] for name in forwards}
    first: Dict[str, float] = {}
    alive = dict(forwards)
    with torch.no_grad():
        for name, forward in list(alive.items()):
            start = time.perf_counter()
            try:
                forward(x)
                _sync(x.device)
            except Exception as error:  # one path failing (no compiler, export) must not stop the others
                alive.pop(name)
                first[name] = float('nan')
                if on_progress:
                    on_progress(f'{name}: failed: {type(error).__name__}: {first_line(error, 160)}')
                continue
            first[name] = time.perf_counter() - start
            if on_progress:
                on_progress(f'{name}: first call {first[name]:.2f} s')
        for round_index in range(warmup + rounds):
            for name, forward in alive.items():
                if pause > 0:
                    time.sleep(pause)
                start = time.perf_counter()
                forward(x)
                _sync(x.device)
                if round_index >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times, first


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def fastest_latency(models: Dict[str, nn.Module], input_shape: Sequence[int] = (1, 3, 180, 320), *,
                    threads: Optional[int] = None,
                    paths: Union[Iterable[str], Dict[str, Iterable[str]]] = ('channels_last', 'compile',
                                                                            'compile_channels_last'),
                    rounds: int = 5, warmup: int = 2, pause: float = 0.1) -> Dict[str, Tuple[str, float]]:
    """{name: (fastest path, its median seconds)} of fp32 CPU ``models``, all paths interleaved in one process.

    ``paths`` is one list for every model, or {name: paths} (for example ONNX Runtime for the networks that
    export). The default paths leave out eager NCHW to save time: benchmarks/speed.py times it, and it is not
    a network's fastest path there. A path that cannot be built (an export that fails) is left out.
    """
    if threads:
        torch.set_num_threads(threads)
    x = torch.rand(*input_shape)
    forwards = {}
    with tempfile.TemporaryDirectory(prefix='lksmn_fastest_') as workdir:
        for name, model in models.items():
            for path in (paths[name] if isinstance(paths, dict) else paths):
                try:
                    forwards[f'{name}|{path}'] = make_forward(model, path, threads=threads, workdir=Path(workdir))
                except Exception:  # noqa: BLE001  (an exporter's many error types: this path is not available)
                    continue
        times, _ = time_interleaved(forwards, x, rounds=rounds, warmup=warmup, pause=pause)
    best: Dict[str, Tuple[str, float]] = {}
    for key, values in times.items():
        name, path = key.split('|', 1)
        value = median(values)
        if value is not None and (name not in best or value < best[name][1]):
            best[name] = (path, value)
    return best
