"""LKSMN in spandrel: every variant we ship or study loads through spandrel's ModelLoader, in every file form,
gives the network's own output, and no other architecture's checkpoint is claimed."""
import importlib
import inspect
from pathlib import Path

import pytest
import torch
import yaml

import lksmn_arch  # noqa: F401  (compatibility fixes before spandrel imports torchvision)
from lksmn_arch import LKSMN, spandrel_support
from lksmn_arch.utils.checkpoint import save_safetensors

import spandrel  # noqa: E402  (the spandrel extra, installed by scripts/setup_env.sh)

ROOT = Path(__file__).resolve().parents[1]
# peers whose constructors need arguments: the values of their published small models
PEER_ARGUMENTS = {
    'SAFMN': dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=4),
    'SAFMN_BCIE': dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=4),
    'SPAN': dict(num_in_ch=3, num_out_ch=3),
    'SwinIR': dict(window_size=8),
    'Swin2SR': dict(window_size=8),
}


@pytest.fixture(scope='module', autouse=True)
def installed():
    spandrel_support.install()


def studied_configs():
    """network_g of every LKSMN option file (defaults per scale, v1, v2, ablations), without type/upscale."""
    configs = {}
    for path in sorted((ROOT / 'options').rglob('train_LKSMN_*.yml')):
        network = dict(yaml.safe_load(path.read_text())['network_g'])
        network.pop('type')
        network.pop('upscale', None)
        configs.setdefault(str(sorted(network.items())), (path.stem, network))
    return list(configs.values())


def _output(model, x):
    with torch.no_grad():
        return model.eval()(x).clamp(0, 1)


def test_install_is_idempotent_and_registers_lksmn():
    assert spandrel_support.install() is False
    assert spandrel_support.ARCH_ID in spandrel.MAIN_REGISTRY


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_every_studied_variant_loads_with_its_hyperparameters_and_gives_its_own_output(scale):
    x = torch.rand(1, 3, 12, 10)
    names = []
    for name, network in studied_configs():
        torch.manual_seed(0)
        model = LKSMN(upscale=scale, **network)
        descriptor = spandrel.ModelLoader().load_from_state_dict({'params_ema': model.state_dict()})
        assert descriptor.architecture.id == 'LKSMN', name
        assert descriptor.scale == scale and descriptor.purpose == 'SR'
        assert descriptor.input_channels == descriptor.output_channels == 3
        assert descriptor.supports_half and descriptor.supports_bfloat16
        assert torch.allclose(descriptor(x), _output(model, x), atol=1e-6), name
        names.append(name)
    assert len(names) >= 10  # v1, v2 and the ablations


@pytest.mark.parametrize('form', ['params_ema', 'params', 'ddp', 'bare', 'safetensors'])
def test_checkpoint_files_load_through_model_loader(tmp_path, form):
    torch.manual_seed(1)
    model = LKSMN(upscale=4).eval()
    state = model.state_dict()
    path = tmp_path / ('net.safetensors' if form == 'safetensors' else 'net.pth')
    if form == 'safetensors':
        save_safetensors(state, path, {'upscale': 4})
    else:
        content = {'params_ema': state, 'params': state, 'bare': state,
                   'ddp': {'params': {f'module.{k}': v for k, v in state.items()}}}[form]
        if form == 'params_ema':
            content = {'params': {k: torch.zeros_like(v) for k, v in state.items()}, 'params_ema': state}
        torch.save(content, path)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    x = torch.rand(1, 3, 16, 16)
    assert descriptor.architecture.name == 'LKSMN'
    assert torch.allclose(descriptor(x), _output(model, x), atol=1e-6)


def _peer_state_dicts():
    """State dicts of every model class spandrel ships that builds without a download."""
    built = {}
    for support in spandrel.MAIN_REGISTRY.architectures():
        if support.architecture.id == spandrel_support.ARCH_ID:
            continue
        module = importlib.import_module(f'spandrel.architectures.{support.architecture.id}')
        for name in getattr(module, '__all__', []):
            cls = getattr(module, name)
            if name.endswith('Arch') or not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
                continue
            try:
                built[f'{support.architecture.id}.{name}'] = cls(**PEER_ARGUMENTS.get(name, {})).state_dict()
            except TypeError:  # needs arguments we do not know (MMRealSR, AuraSR): not buildable here
                continue
    return built


def test_no_other_architecture_is_claimed():
    peers = _peer_state_dicts()
    assert {'SAFMN.SAFMN', 'SPAN.SPAN', 'SwinIR.SwinIR', 'HAT.HAT', 'OmniSR.OmniSR'} <= set(peers)
    claimed = [name for name, state in peers.items() if spandrel_support.detect(state)]
    assert claimed == []
    assert len(peers) >= 40


def test_a_peer_checkpoint_still_loads_as_the_peer():
    from spandrel.architectures.SAFMN import SAFMN
    descriptor = spandrel.ModelLoader().load_from_state_dict(SAFMN(**PEER_ARGUMENTS['SAFMN']).state_dict())
    assert descriptor.architecture.id == 'SAFMN'
