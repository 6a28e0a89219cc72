"""Put a trained checkpoint into the package as a shipped model (maintainers' tool).

Takes the EMA weights (``params_ema``, else ``params``) of a BasicSR checkpoint, refuses non-finite ones,
writes ``lksmn_arch/weights/<name>.pth`` as ``{'params_ema': state_dict}`` and ``<name>.safetensors``, and records them in
``lksmn_arch/weights/models.json`` with its sha256, scale, network configuration (read from the shapes),
data, recipe, iterations and hardware::

    .venv/bin/python scripts/ship_weights.py --checkpoint RUN/models/net_g_8000.pth --name LKSMN_x4_openphotos \\
        --iterations 8000 --data "open-photos training split (132 photos)" \\
        --recipe options/train_LKSMN_x4_openphotos.yml --hardware "2-core CPU, 1 thread"
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lksmn_arch.utils.atomic import atomic_save, replace_atomically  # noqa: E402
from lksmn_arch.utils.checkpoint import infer_lksmn_config, load_state_dict, save_safetensors  # noqa: E402
from lksmn_arch.weights.shipped import INDEX, WEIGHTS_DIR, file_sha256  # noqa: E402


def ship(checkpoint: Path, name: str, iterations: int, data: str, recipe: str, hardware: str, notes: str = '') -> dict:
    """Write the weights file and its models.json entry (replacing an entry of the same name); returns the entry."""
    state_dict = load_state_dict(checkpoint)
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SystemExit(f'ship_weights.py: error: {checkpoint}: tensor {key} is not finite; refusing to ship it')
    config = infer_lksmn_config(state_dict)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    target = WEIGHTS_DIR / f'{name}.pth'
    atomic_save({'params_ema': {k: v.contiguous() for k, v in state_dict.items()}}, target, 'shipped weights')
    tensors = save_safetensors(state_dict, target.with_suffix('.safetensors'), config)
    entry = {'name': name, 'file': target.name, 'sha256': file_sha256(target), 'scale': config['upscale'],
             'network': config, 'data': data, 'recipe': recipe, 'iterations': iterations, 'hardware': hardware,
             'notes': notes, 'safetensors_file': tensors.name, 'safetensors_sha256': file_sha256(tensors)}
    index = json.loads(INDEX.read_text()) if INDEX.is_file() else {'models': []}
    index['models'] = [m for m in index['models'] if m['name'] != name] + [entry]
    index['models'].sort(key=lambda m: (m['scale'], m['name']))
    text = json.dumps(index, indent=1) + '\n'
    replace_atomically(INDEX, lambda temp: temp.write_text(text), durable=False)
    return entry


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='scripts/ship_weights.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', type=Path, required=True, help='BasicSR checkpoint (net_g_<iter>.pth)')
    parser.add_argument('--name', required=True, help='model name, e.g. LKSMN_x4_openphotos')
    parser.add_argument('--iterations', type=int, required=True, help='training iterations of the checkpoint')
    parser.add_argument('--data', required=True, help='what it was trained on')
    parser.add_argument('--recipe', required=True, help='the option file it was trained with')
    parser.add_argument('--hardware', required=True, help='where it was trained')
    parser.add_argument('--notes', default='', help='anything else a user should know')
    args = parser.parse_args(argv)
    entry = ship(args.checkpoint, args.name, args.iterations, args.data, args.recipe, args.hardware, args.notes)
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
