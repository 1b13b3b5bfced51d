"""Activate the plugin right after a host module is imported, with no change to it.

``llava_freepruner_autoload.pth`` (installed into site-packages) imports this
module at interpreter start-up, only when a variable starting with one of
:data:`~llava_freepruner.hosts.ENV_PREFIXES` is set, and calls :func:`install`.
Standard library only: it runs in every such process before anything else.

The hook keys on the module names in :data:`~llava_freepruner.hosts.HOST_MODULES`
(upstream ``llava``, installed or run from a source checkout, and transformers'
LLaVA modeling modules); each one is handed to the plugin once its body has run.
"""

import sys

from .hosts import HOST_MODULES


def install():
    """Hand every host already imported to the plugin, and watch for the others."""
    for name in HOST_MODULES:
        if name in sys.modules:
            _host_imported(name)
    if not all(name in sys.modules for name in HOST_MODULES) and not any(
            isinstance(finder, HostImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, HostImportWatcher())


def _host_imported(name):
    # Looked up at call time (not bound at import) so the entry point stays replaceable.
    import llava_freepruner

    llava_freepruner.host_imported(name)


class HostImportWatcher:
    """Meta-path finder that lets the other finders locate a host module and wraps its loader."""

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
            spec.loader = _ActivateAfterExec(spec.loader)
        return spec


class _ActivateAfterExec:
    """Loader proxy: runs the real loader, then hands the module to the plugin (errors propagate)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        # From here on nobody should see the proxy.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        if all(name in sys.modules for name in HOST_MODULES):
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, HostImportWatcher)]
        _host_imported(module.__name__)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def uninstall():
    """Stop watching for host imports (``llava_freepruner.remove()``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, HostImportWatcher)]
