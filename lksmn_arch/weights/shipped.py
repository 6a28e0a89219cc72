"""The LKSMN models shipped inside the package (``lksmn_arch/weights/``), and the default one per scale.

``lksmn_arch/weights/models.json`` lists each shipped model: file, sha256, scale, network configuration,
training data, recipe, iterations and hardware; ``docs/models.md`` is its model card. A shipped file is
checked against its sha256 before use, so a damaged install is refused rather than run::

    from lksmn_arch.weights.shipped import default_model
    path = default_model(4).path          # lksmn_arch/weights/LKSMN_x4_openphotos.pth
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

WEIGHTS_DIR = Path(__file__).parent
INDEX = WEIGHTS_DIR / 'models.json'


class ShippedModelError(ValueError):
    """No shipped model for a request, or a shipped file that fails its check."""


@dataclass(frozen=True)
class ShippedModel:
    """One entry of ``weights/models.json``."""

    name: str
    file: str
    sha256: str
    scale: int
    network: Dict[str, Any]
    data: str
    recipe: str
    iterations: int
    hardware: str
    notes: str = ''
    safetensors_file: str = ''
    safetensors_sha256: str = ''

    @property
    def path(self) -> Path:
        """The BasicSR checkpoint (``{'params_ema': ...}``)."""
        return WEIGHTS_DIR / self.file

    @property
    def safetensors_path(self) -> Optional[Path]:
        """The same weights as ``.safetensors`` (for spandrel-based tools), if shipped."""
        return WEIGHTS_DIR / self.safetensors_file if self.safetensors_file else None

    def describe(self) -> str:
        """One line for a user: name, scale, data and iterations."""
        return f'{self.name} (shipped x{self.scale} model, trained {self.iterations} iterations on {self.data})'


def shipped_models(index: Path = INDEX) -> List[ShippedModel]:
    """Every shipped model (empty when the package ships none)."""
    if not Path(index).is_file():
        return []
    entries = json.loads(Path(index).read_text(encoding='utf-8'))['models']
    return [ShippedModel(**entry) for entry in entries]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def default_model(scale: int = 4, *, verify: bool = True, index: Optional[Path] = None) -> ShippedModel:
    """The shipped model for ``scale`` (its file checked against the listed sha256 unless ``verify`` is off).

    Raises ShippedModelError saying which scales have one, or that the file is missing or damaged.
    """
    models = shipped_models(index or INDEX)
    for model in models:
        if model.scale == scale:
            if not model.path.is_file():
                raise ShippedModelError(f'the shipped model {model.path} is missing: reinstall lksmn_arch')
            for path, expected in ((model.path, model.sha256), (model.safetensors_path, model.safetensors_sha256)):
                if verify and path is not None and file_sha256(path) != expected:
                    raise ShippedModelError(f'the shipped model {path} does not match its sha256 in {INDEX.name}: '
                                            'the install is damaged; reinstall lksmn_arch')
            return model
    have = ', '.join(f'x{m.scale}' for m in sorted(models, key=lambda m: m.scale)) or 'none'
    raise ShippedModelError(f'no shipped LKSMN model for x{scale} (shipped: {have}); pass -m with a checkpoint '
                            'of your own (lksmn-train) for this scale')
