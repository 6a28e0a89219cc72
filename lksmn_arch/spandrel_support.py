"""LKSMN in spandrel (chaiNNer, ComfyUI, the Stable Diffusion web UIs): detect and load LKSMN checkpoints.

spandrel has no plugin discovery; a package adds an architecture to its ``MAIN_REGISTRY``::

    import lksmn_arch.spandrel_support
    lksmn_arch.spandrel_support.install()          # idempotent
    from spandrel import ModelLoader
    model = ModelLoader().load_from_file('LKSMN_x4_openphotos.pth')   # or .safetensors
    model.scale, model.architecture.name           # 4, 'LKSMN'

Detection needs the keys every LKSMN state dict has (``checkpoint.REQUIRED_KEYS``) and then reads the
hyperparameters from the shapes with the same function ``lksmn-upscale`` uses
(``checkpoint.infer_lksmn_config``), so every variant (v1, v2, the ablations, x2/x3/x4) loads and no other
architecture's checkpoint is claimed. spandrel stays optional (the ``spandrel`` extra).

Precision flags, as measured (``benchmarks/model_card.py``, docs/models.md): bf16 agrees with fp32 within
0.01 dB on real photos; fp16 (the spandrel model in half precision) stays finite and within 0.01 dB too.
"""
from typing import Any, Dict

from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.utils.checkpoint import REQUIRED_KEYS, check_weights, infer_lksmn_config

ARCH_ID = 'LKSMN'
SUPPORTS_HALF = True  # measured: docs/models.md, "precision"
SUPPORTS_BFLOAT16 = True  # measured: docs/models.md, "precision"


def detect(state_dict: Dict[str, Any]) -> bool:
    """True when ``state_dict`` has every key an LKSMN has and its shapes give an LKSMN configuration."""
    if not all(key in state_dict for key in REQUIRED_KEYS):
        return False
    try:
        infer_lksmn_config(state_dict)
    except ValueError:
        return False
    return True


def _architecture_class():
    from spandrel import Architecture, ImageModelDescriptor

    class LKSMNArch(Architecture[LKSMN]):
        """spandrel's description of LKSMN: detection from the keys, hyperparameters from the shapes."""

        def __init__(self) -> None:
            super().__init__(id=ARCH_ID, name='LKSMN', detect=detect)

        def load(self, state_dict: Dict[str, Any]) -> 'ImageModelDescriptor[LKSMN]':
            check_weights(state_dict, 'given to spandrel')  # the checks lksmn-upscale makes: no NaN, no int8
            config = infer_lksmn_config(state_dict)
            model = LKSMN(**config)
            model.load_state_dict(state_dict, strict=True)
            variant = [f"{config['num_feat']}nf", f"{config['num_block']}nb"]
            return ImageModelDescriptor(
                model, state_dict, architecture=self, purpose='SR', tags=variant,
                supports_half=SUPPORTS_HALF, supports_bfloat16=SUPPORTS_BFLOAT16, scale=config['upscale'],
                input_channels=config['num_in_ch'], output_channels=config['num_out_ch'])

    return LKSMNArch


def install(registry: Any = None) -> bool:
    """Add LKSMN to spandrel's ``MAIN_REGISTRY`` (or ``registry``); True if it was added now, False if it
    was there already. Raises ImportError with the install command when spandrel is missing."""
    try:
        from spandrel import MAIN_REGISTRY, ArchSupport
    except ImportError as error:
        raise ImportError('spandrel is not installed: pip install spandrel safetensors') from error
    registry = MAIN_REGISTRY if registry is None else registry
    if ARCH_ID in registry:
        return False
    registry.add(ArchSupport.from_architecture(_architecture_class()()))
    return True
