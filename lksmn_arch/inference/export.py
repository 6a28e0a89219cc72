"""Export an LKSMN checkpoint to ONNX with dynamic batch, height and width, and run it with ONNX Runtime.

    lksmn-export -m net_g_latest.pth --onnx lksmn_x4.onnx
    lksmn-export -m net_g_latest.pth --safetensors lksmn_x4.safetensors

Exporter: torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)``), the
default and maintained one since torch 2.9; the TorchScript-based one is deprecated. Both export LKSMN
correctly; the dynamo one is used. The example input has batch 2 and a non-square size, so that
torch.export does not specialise any dimension to 1 or to a square shape. After the export the model is
checked against PyTorch with ONNX Runtime on two other input shapes (disable with ``--no-verify``).

``lksmn-export`` exports the network's exact inference form (``LKSMN.fuse_for_inference``), the form
``lksmn-upscale`` runs, and checks it against the checkpoint's training form.

The model's scale and hyperparameters are stored in the ONNX metadata (``lksmn_scale``, ``lksmn_config``)
so that ``OnnxModel`` (used by ``lksmn-upscale --backend onnxruntime``) needs only the .onnx file.
"""
import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from lksmn_arch.errors import first_line
from lksmn_arch.utils.atomic import replace_atomically
from lksmn_arch.utils.checkpoint import build_model_from_checkpoint

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's dynamo exporter writes opset 18 and newer; it silently made 18 when asked for less
INPUT_NAME = 'input'
OUTPUT_NAME = 'output'
EXAMPLE_SHAPE = (2, 24, 20)  # batch, height, width of the tracing input: none of them 1, not square
VERIFY_SHAPES = ((1, 17, 23), (2, 32, 32))
VERIFY_TOLERANCE = 1e-4

PathLike = Union[str, os.PathLike]


def export_onnx(model: nn.Module, path: PathLike, *, opset: int = DEFAULT_OPSET,
                metadata: Optional[Dict[str, str]] = None) -> Path:
    """Export ``model`` (N, C, H, W -> N, C, sH, sW) to ONNX at ``path``, written atomically.

    Batch, height and width are dynamic. ``metadata`` is added to the model's metadata_props. The model is
    put in eval mode, fp32, on the CPU (in place), as the exporter traces it there.
    """
    import onnx
    from torch.export import Dim

    path = Path(path)
    if path.is_dir():
        raise ValueError(f'--onnx {path} is a directory; give a file name such as {path / "lksmn.onnx"}')
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f'--opset {opset}: the exporter writes opsets {MIN_OPSET} to {newest} (the installed onnx '
                         'package\'s newest)')
    path.parent.mkdir(parents=True, exist_ok=True)
    in_channels = int(getattr(model, 'num_in_ch', 3))
    model = model.eval().float().cpu()
    batch, height, width = EXAMPLE_SHAPE
    example = torch.rand(batch, in_channels, height, width)
    dynamic = {0: Dim('batch', min=1), 2: Dim('height', min=1), 3: Dim('width', min=1)}
    forward_arg = next(iter(_forward_parameters(model)))

    with warnings.catch_warnings():
        # torch-internal noise of the exporter, not actionable by the user
        warnings.filterwarnings('ignore', message='.*LeafSpec.*', category=FutureWarning)
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={forward_arg: dynamic}, external_data=False,
                                        verbose=False)
        except Exception as error:  # torch.export / onnxscript raise many types; say which step failed
            raise RuntimeError(f'ONNX export to {path} failed (opset {opset}): {type(error).__name__}: '
                               f'{error}') from error
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')), None)
    if written != opset:
        raise RuntimeError(f'ONNX export to {path}: asked for opset {opset}, the exporter made opset {written}; '
                           'nothing was written')
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise RuntimeError(f'ONNX export to {path} (opset {opset}) is not a valid model: '
                           f'{str(error).splitlines()[0]}; nothing was written') from None
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    replace_atomically(path, lambda temporary: onnx.save_model(proto, str(temporary)), suffix='.tmp')
    return path


def _forward_parameters(model: nn.Module) -> List[str]:
    import inspect
    return [name for name in inspect.signature(model.forward).parameters]


class OnnxModel:
    """An ONNX super-resolution model run by ONNX Runtime, callable like a network on CPU float32 tensors.

    ``scale`` comes from the metadata that ``export_onnx`` writes, or, for other ONNX files, from a probe run
    on an 8x8 input. ``device`` 'auto' uses the CUDA execution provider when onnxruntime has one.
    """

    backend = 'onnxruntime'  # the name memory.py's model knows it by

    def __init__(self, path: PathLike, device: str = 'auto', threads: Optional[int] = None) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, device, threads=threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f'{self.path}: expected one 4D (N, C, H, W) input, found '
                             f'{[(i.name, i.shape) for i in inputs]}')
        self.input_name = inputs[0].name
        channels = inputs[0].shape[1]
        self.in_channels = channels if isinstance(channels, int) else 3
        meta = self.session.get_modelmeta().custom_metadata_map
        if 'lksmn_scale' in meta:
            self.scale = int(meta['lksmn_scale'])
        else:
            probe = self(torch.zeros(1, self.in_channels, 8, 8))
            self.scale = probe.shape[-1] // 8
        self.config = json.loads(meta['lksmn_config']) if 'lksmn_config' in meta else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        return torch.from_numpy(self.session.run(None, feed)[0])


OPENVINO_PRECISION_HINTS = {'fp32': 'f32', 'bf16': 'bf16'}


def openvino_config(precision: str, threads: Optional[int] = None) -> Dict[str, Any]:
    """OpenVINO CPU compile options: inference precision 'fp32' or 'bf16', latency-oriented, ``threads``."""
    if precision not in OPENVINO_PRECISION_HINTS:
        raise ValueError(f"OpenVINO runs 'fp32' or 'bf16', got precision {precision!r}")
    config: Dict[str, Any] = {'INFERENCE_PRECISION_HINT': OPENVINO_PRECISION_HINTS[precision],
                              'PERFORMANCE_HINT': 'LATENCY'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = int(threads)
    return config


class OpenVinoModel:
    """An ONNX super-resolution model run by OpenVINO's CPU plugin, callable like a network on CPU float32
    tensors.

    Each input shape gets its own static compilation (about 0.2 s for LKSMN on a 2-core CPU), kept for the
    ``cache_size`` most recent shapes (default 2): static shapes ran 10% faster than one dynamic compilation
    here, so a folder of images of one size, or tiles (which have one shape), pays it once. Each compiled
    shape holds its own working memory, about one pass's worth: with 8 kept, a folder of 20 photos of mixed
    sizes peaked at 5.8 GB (benchmarks/upscale_speed.py), so only two are kept. ``precision`` 'bf16' runs bfloat16 where the CPU
    has it (OpenVINO's inference precision hint); 'fp32' keeps float32.
    """

    backend = 'openvino'  # the name memory.py's model knows it by

    def __init__(self, path: PathLike, precision: str = 'fp32', threads: Optional[int] = None,
                 cache_size: int = 2) -> None:
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX model {self.path} does not exist (or is not a file)')
        check_onnx_file(self.path)  # before OpenVINO, whose parser prints several lines of its own on garbage
        self._config = openvino_config(precision, threads)
        self.precision = precision
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises its own exception types, with many-line messages
            raise ValueError(f'cannot load ONNX model {self.path} with OpenVINO: {first_line(error, 300)}') from error
        if len(self._model.inputs) != 1 or self._model.inputs[0].get_partial_shape().rank.get_length() != 4:
            raise ValueError(f'{self.path}: expected one 4D (N, C, H, W) input')
        self._cache_size = cache_size
        self._requests: 'Dict[Tuple[int, ...], Any]' = {}
        meta = _onnx_metadata(self.path)
        channels = self._model.inputs[0].get_partial_shape()[1]
        self.in_channels = channels.get_length() if channels.is_static else 3
        if 'lksmn_scale' in meta:
            self.scale = int(meta['lksmn_scale'])
        else:
            self.scale = self(torch.zeros(1, self.in_channels, 8, 8)).shape[-1] // 8
        self.config = json.loads(meta['lksmn_config']) if 'lksmn_config' in meta else None

    def _request(self, shape: Tuple[int, ...]) -> Tuple[Any, Tuple[int, ...]]:
        """(infer request, output shape) compiled for input ``shape``; the least recently used one goes."""
        entry = self._requests.pop(shape, None)
        if entry is None:
            entry = openvino_compile(self._core, self._model.clone(), shape, self._config)
            while len(self._requests) >= self._cache_size:
                self._requests.pop(next(iter(self._requests)))  # the least recently used shape
        self._requests[shape] = entry  # most recently used last
        return entry

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request, output_shape = self._request(tuple(x.shape))
        return openvino_infer(request, output_shape, x)


def openvino_compile(core: Any, model: Any, shape: Tuple[int, ...], config: Dict[str, Any]
                     ) -> Tuple[Any, Tuple[int, ...]]:
    """(infer request, output shape) of OpenVINO ``model`` (reshaped in place) compiled on the CPU for the
    static input ``shape``: static shapes ran 10% faster than one dynamic compilation."""
    import openvino as ov

    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    compiled = core.compile_model(model, 'CPU', config)
    return compiled.create_infer_request(), tuple(compiled.outputs[0].get_shape())


def openvino_infer(request: Any, output_shape: Tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """Run an OpenVINO infer request (one input, one float32 output of ``output_shape``) on ``x``.

    OpenVINO reads the input in place and writes straight into a tensor we own: copying the output out of
    OpenVINO's buffer cost 3% of LKSMN's 720p call.
    """
    import openvino as ov

    data = np.ascontiguousarray(x.detach().cpu().float().numpy())
    out = torch.empty(output_shape, dtype=torch.float32)
    # the request keeps pointing at ``out`` after this call, so every call sets its own output before inferring
    request.set_output_tensor(0, ov.Tensor(out.numpy(), shared_memory=True))
    request.infer({0: data}, share_inputs=True)
    return out


def check_onnx_file(path: Path) -> None:
    """ValueError (one line, naming the file) unless ``path`` parses as an ONNX model (its graph, without
    external weights)."""
    import onnx
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise ValueError(f'cannot load ONNX model {path}: not a valid ONNX file ({first_line(error, 300)})') from None


def _onnx_metadata(path: Path) -> Dict[str, str]:
    """The metadata_props of an ONNX file (without its weights)."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (not readable as ONNX: OpenVINO has already read it, so no metadata)
        return {}
    return {entry.key: entry.value for entry in proto.metadata_props}


def create_session(path: PathLike, device: str = 'auto',
                   threads: Optional[int] = None) -> 'onnxruntime.InferenceSession':  # noqa: F821
    """An ONNX Runtime session for ``path``: CUDA provider for 'cuda' (an error if absent), CPU for 'cpu'.

    'auto' takes CUDA when onnxruntime offers it, else the CPU. ``threads`` sets the intra-op thread count
    (default: onnxruntime's, one per core).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ONNX model {path} does not exist (or is not a file)')
    available = ort.get_available_providers()
    if device == 'cuda':
        if 'CUDAExecutionProvider' not in available:
            raise ValueError(f'--device cuda was asked for, but this onnxruntime has no CUDA provider '
                             f'(it has {available}; install onnxruntime-gpu)')
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    elif device == 'cpu':
        providers = ['CPUExecutionProvider']
    elif device == 'auto':
        providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]
    else:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ValueError(f'cannot load ONNX model {path}: {first_line(error, 300)}') from error


def max_abs_difference(model: nn.Module, onnx_path: PathLike,
                       shapes: Sequence[Tuple[int, int, int]] = VERIFY_SHAPES) -> float:
    """Largest |ONNX Runtime - PyTorch| over random inputs of the (batch, height, width) ``shapes``."""
    onnx_model = OnnxModel(onnx_path, device='cpu')
    in_channels = int(getattr(model, 'num_in_ch', 3))
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in shapes:
        x = torch.rand(batch, in_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = model(x)
        worst = max(worst, float((onnx_model(x) - expected).abs().max()))
    return worst


def export_checkpoint(checkpoint: PathLike, onnx_path: PathLike, *, opset: int = DEFAULT_OPSET,
                      verify: bool = True) -> Tuple[Path, Dict[str, Any], Optional[float]]:
    """Export an LKSMN checkpoint's exact inference form (``fuse_for_inference``) to ``onnx_path``.

    Returns (path, the network's configuration, and with ``verify`` the max abs difference between ONNX
    Runtime and the training form on ``VERIFY_SHAPES``, else None); the caller judges it against
    ``VERIFY_TOLERANCE``.
    """
    model, config = build_model_from_checkpoint(checkpoint)
    metadata = {'lksmn_scale': str(config['upscale']), 'lksmn_config': json.dumps(config)}
    path = export_onnx(copy.deepcopy(model).fuse_for_inference(), onnx_path, opset=opset, metadata=metadata)
    return path, config, max_abs_difference(model, path) if verify else None


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse an output that is an input (always), that is given twice, or that exists (unless ``overwrite``)."""
    resolved_inputs = {p.resolve() for p in inputs}
    seen = set()
    for output in outputs:
        if output.parent.exists() and not output.parent.is_dir():
            raise ValueError(f'output {output}: {output.parent} is not a folder')
        resolved = output.resolve()
        if resolved in resolved_inputs:
            raise ValueError(f'output {output} is the input checkpoint; refusing to overwrite it')
        if resolved in seen:
            raise ValueError(f'output {output} is given twice')
        seen.add(resolved)
        if output.exists() and not overwrite:
            raise ValueError(f'output {output} exists; pass --overwrite to replace it')


def export_safetensors(checkpoint: PathLike, path: PathLike) -> Tuple[Path, Dict[str, Any]]:
    """Write an LKSMN checkpoint's weights (EMA where present) as ``.safetensors``; returns (path, configuration)."""
    from lksmn_arch.utils.checkpoint import save_safetensors
    model, config = build_model_from_checkpoint(checkpoint)
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as export_onnx does
    return save_safetensors(model.state_dict(), path, config), config
