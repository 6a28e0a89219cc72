"""Make BasicSR's registries accept a module being imported again (importlib.reload, re-import).

BasicSR's ``Registry`` asserts that a name is registered once. Re-running the same module's
``@ARCH_REGISTRY.register()`` (a reload) would then raise "already registered". The patch lets a
class replace the entry that has the same module and qualified name; a *different* class under a
taken name still raises, as it should.
"""
from basicsr.utils.registry import Registry

_PATCH_FLAG = '_lksmn_tolerates_reregistration'


def _same_definition(old: object, new: object) -> bool:
    return (getattr(old, '__module__', None), getattr(old, '__qualname__', None)) == \
        (getattr(new, '__module__', None), getattr(new, '__qualname__', None))


def tolerate_reregistration() -> bool:
    """Patch ``Registry._do_register`` once; return True if this call patched it."""
    original = getattr(Registry, '_do_register', None)
    if original is None or getattr(original, _PATCH_FLAG, False):
        return False

    def _do_register(self, name, obj, suffix=None):
        key = f'{name}_{suffix}' if isinstance(suffix, str) else name
        if key in self._obj_map and _same_definition(self._obj_map[key], obj):
            del self._obj_map[key]
        return original(self, name, obj, suffix)

    setattr(_do_register, _PATCH_FLAG, True)
    Registry._do_register = _do_register
    return True
