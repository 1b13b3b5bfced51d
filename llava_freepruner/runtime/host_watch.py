"""The import watcher: a meta-path finder that hands each host module to a callback
right after its body ran. Standard library only: the ``.pth`` hook installs it at
interpreter start-up (:mod:`llava_freepruner.autoload`), ``apply()`` for hosts imported later.
"""

import sys

from ..hosts import HOST_MODULES


def install(on_import):
    """Hand every host already imported to ``on_import(name)``, and watch for the others."""
    for name in HOST_MODULES:
        if name in sys.modules:
            on_import(name)
    if not all(name in sys.modules for name in HOST_MODULES) and not any(
            isinstance(finder, HostImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, HostImportWatcher(on_import))


def uninstall():
    """Stop watching for host imports (``llava_freepruner.remove()``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, HostImportWatcher)]


class HostImportWatcher:
    """Meta-path finder that lets the other finders locate a host module and wraps its loader."""

    def __init__(self, on_import):
        self.on_import = on_import

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOST_MODULES:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if hasattr(spec.loader, "exec_module"):
            spec.loader = _ActivateAfterExec(spec.loader, self.on_import)
        return spec


class _ActivateAfterExec:
    """Loader proxy: runs the real loader, then hands the module to the callback (errors propagate)."""

    def __init__(self, loader, on_import):
        self.loader = loader
        self.on_import = on_import

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        # From here on nobody should see the proxy.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        if all(name in sys.modules for name in HOST_MODULES):
            uninstall()
        self.on_import(module.__name__)

    def __getattr__(self, name):
        return getattr(self.loader, name)
