"""``LKSMNModel``: BasicSR's SRModel with checkpoints loaded without executing pickled code."""
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from lksmn_arch.resume import load_trusted


@MODEL_REGISTRY.register()
class LKSMNModel(SRModel):
    """SRModel for LKSMN. Option keys and file layout are BasicSR's, so ``model_type: SRModel`` option
    files only need the type changed."""

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """As BasicSR's, but the file is read with weights-only loading (refusing pickled code)."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        checkpoint = load_trusted(load_path)
        if param_key is not None:
            if param_key not in checkpoint and 'params' in checkpoint:
                logger.info(f'Loading: {param_key} does not exist in {load_path}, use params.')
                param_key = 'params'
            checkpoint = checkpoint[param_key]
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
        for key in list(checkpoint):
            if key.startswith('module.'):
                checkpoint[key[len('module.'):]] = checkpoint.pop(key)
        self._print_different_keys_loading(net, checkpoint, strict)
        net.load_state_dict(checkpoint, strict=strict)
