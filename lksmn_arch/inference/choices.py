"""The choices ``lksmn-upscale`` offers, with no heavy import, so that its ``--help`` and argument errors
answer before torch and BasicSR load (the modules that act on them import these names from here)."""

OUTPUT_EXTENSIONS = ('auto', 'png', 'jpg', 'webp')
BACKENDS = ('auto', 'torch', 'onnxruntime', 'openvino')
DEVICES = ('auto', 'cpu', 'cuda')
PRECISION_NAMES = ('fp32', 'fp16', 'bf16')
ALPHA_MODES = ('network', 'bicubic')
DEFAULT_MAX_PIXELS = 50_000_000  # an 8K photo is 33 MP; its x4 float32 output alone is 1.5 GiB


def parse_max_pixels(text: str) -> int:
    """``--max-pixels``: a positive, finite count (``50e6`` allowed); ValueError naming the value otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not (value >= 1 and value != float('inf')):
        raise ValueError(f'--max-pixels {text!r} must be a positive number of pixels, such as 50e6')
    return int(value)
