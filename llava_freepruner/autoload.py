"""Activate the plugin right after ``llava`` is imported, with no change to upstream.

``llava_freepruner_autoload.pth`` (installed into site-packages) imports this
module at interpreter start-up, only when a variable starting with one of
:data:`ENV_PREFIXES` is set, and calls :func:`install`. Standard library only:
it runs in every such process before anything else.

The hook keys on the module name ``llava``, so it works for an installed
``llava`` and for a source checkout run from its root alike.
"""

import sys

ENV_PREFIXES = ("FREEPRUNER_", "FITPRUNE_")
TARGET_MODULE = "llava"

_activated = False


def install():
    """Activate now if ``llava`` is already imported, else once its package body has run."""
    if TARGET_MODULE in sys.modules:
        _activate()
    elif not any(isinstance(finder, LlavaImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, LlavaImportWatcher())


def _activate():
    global _activated
    if _activated:
        return
    _activated = True
    # Looked up at call time (not bound at import) so the entry point stays replaceable.
    import llava_freepruner

    llava_freepruner.activate_from_env()


class LlavaImportWatcher:
    """Meta-path finder that lets the other finders locate ``llava`` and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET_MODULE:
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
    """Loader proxy: runs the real loader, then activates the plugin (errors propagate)."""

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
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, LlavaImportWatcher)]
        _activate()

    def __getattr__(self, name):
        return getattr(self.loader, name)
