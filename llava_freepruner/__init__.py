"""Training-free visual-token pruning for LLaVA-family models.

Importing this package is cheap (standard library only): torch and llava are
imported when the plugin is applied, never at interpreter start-up.
"""

__version__ = "0.1.0"

__all__ = ["apply", "remove", "is_applied", "activate_from_env", "__version__"]


def apply(config=None, **overrides):
    """Patch the imported ``llava`` package so it prunes visual tokens.

    ``config`` is a :class:`llava_freepruner.config.Config`; without it the
    configuration is read from the ``FREEPRUNER_*`` environment variables.
    Keyword overrides replace single fields (``apply(ratio=0.5)``).
    Applying twice replaces the configuration; the patches are installed once.
    """
    from .llava_patch import apply as _apply

    return _apply(config, **overrides)


def remove():
    """Undo :func:`apply`: every patched attribute gets its original back."""
    from .llava_patch import remove as _remove

    _remove()


def is_applied():
    from .llava_patch import is_applied as _is_applied

    return _is_applied()


def activate_from_env():
    """Entry point of the import hook: apply the configuration in the environment.

    A bad variable stops the process with a message naming it, before any model
    is loaded.
    """
    from .llava_patch import activate_from_env as _activate

    _activate()
