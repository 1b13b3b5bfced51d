"""Training-free visual-token pruning for LLaVA-family models.

Importing this package is cheap (standard library only): torch and the host
libraries (upstream ``llava``, ``transformers``) are imported when the plugin is
applied, never at interpreter start-up.
"""

__version__ = "0.2.0"

__all__ = ["apply", "remove", "is_applied", "activate_from_env", "host_imported", "__version__"]


def apply(config=None, **overrides):
    """Patch the LLaVA classes of every supported host so they prune visual tokens.

    Hosts already imported are patched now, the others right after their import.
    ``config`` is a :class:`llava_freepruner.config.Config`; without it the
    configuration is read from the ``FREEPRUNER_*`` environment variables.
    Keyword overrides replace single fields (``apply(ratio=0.5)``).
    Applying twice replaces the configuration; the patches are installed once.
    """
    from .runtime.backends import apply as _apply

    return _apply(config, **overrides)


def remove():
    """Undo :func:`apply`: every patched attribute gets its original back."""
    from .runtime.backends import remove as _remove

    _remove()


def is_applied():
    from .runtime.backends import is_applied as _is_applied

    return _is_applied()


def activate_from_env():
    """Apply the configuration in the environment.

    A bad variable stops the process with a message naming it, before any model
    is loaded.
    """
    from .runtime.backends import activate_from_env as _activate

    _activate()


def host_imported(module_name):
    """Entry point of the import hook: ``module_name`` (a host module) was just imported."""
    from .runtime.backends import host_imported as _host_imported

    _host_imported(module_name)
