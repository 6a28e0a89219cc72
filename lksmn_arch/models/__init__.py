"""Import every ``*_model.py`` module of this folder so that its classes register in MODEL_REGISTRY."""
import importlib
from pathlib import Path

_model_modules = [
    importlib.import_module(f'{__name__}.{path.stem}') for path in sorted(Path(__file__).parent.glob('*_model.py'))
]
