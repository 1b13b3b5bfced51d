"""Activate the plugin right after a host module is imported, with no change to it.

``llava_freepruner_autoload.pth`` (installed into site-packages) imports this
module at interpreter start-up, only when a variable starting with one of
:data:`~llava_freepruner.hosts.ENV_PREFIXES` is set, and calls :func:`install`.
Standard library only: it runs in every such process before anything else.

The hook keys on the module names in :data:`~llava_freepruner.hosts.HOST_MODULES`
(upstream ``llava``, installed or run from a source checkout, and transformers'
LLaVA and Qwen-VL modeling modules); each one is handed to the plugin once its body
has run (the watcher: :mod:`llava_freepruner.runtime.host_watch`).
"""

from .runtime.host_watch import HostImportWatcher, uninstall
from .runtime.host_watch import install as _watch


def install():
    """Hand every host already imported to the plugin, and watch for the others."""
    _watch(_host_imported)


def _host_imported(name):
    # Looked up at call time (not bound at import) so the entry point stays replaceable.
    import llava_freepruner

    llava_freepruner.host_imported(name)


__all__ = ["HostImportWatcher", "install", "uninstall"]
