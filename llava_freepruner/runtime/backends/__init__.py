"""Backends: one per family of host classes, each a thin set of reversible patches.

- ``upstream_llava``: upstream ``llava`` (``LlavaMetaForCausalLM``, LLaVA-1.5 and -NeXT).
- ``transformers_llava``: transformers' own ``LlavaModel`` and ``LlavaNextModel``.

One :class:`~llava_freepruner.runtime.session.Session` serves every backend. A backend is
installed when its host module is imported (or at :func:`apply` when it already
is); methods and the rest of the core know nothing of backends.
"""

from __future__ import annotations

import atexit
import importlib
import sys
from typing import Dict, Optional

from ... import config as config_module
from ...config import Config, ConfigError
from ...hosts import HOST_MODULES
from ..quantization import quiet_torchao_import
from ..session import Session, log
from .. import host_watch

_session: Optional[Session] = None
_installed: Dict[str, object] = {}     # host module name -> backend module whose patches are on it


def _backend(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def _install_imported_hosts() -> None:
    for host, backend in HOST_MODULES.items():
        if host in sys.modules and host not in _installed:
            module = _backend(backend)
            module.install(_session, sys.modules[host])
            _installed[host] = module


def apply(config: Optional[Config] = None, **overrides) -> Config:
    """Install the backends of the hosts already imported (and, through the import
    watcher, of those imported later) with ``config`` (default: from the environment)."""
    global _session
    quiet_torchao_import()
    config = config_module.from_env() if config is None else config
    if overrides:
        config = config.replace(**overrides)
    if _session is not None:
        _session.close()
    _session = Session(config)
    for host, module in _installed.items():
        module.install(_session, sys.modules[host])
    _install_imported_hosts()
    host_watch.install(host_imported)
    if not config.enabled:
        log.info(config_module.describe(config))
    elif _session.vision is None and config.llm_method is None:
        log.info("freePruner: no FREEPRUNER_RATIO or FREEPRUNER_TOKENS set; visual tokens are not pruned.")
    elif _session.vision is None:
        _session.say_once(config_module.describe(config))
    # A vision method's line names the model's token count: its backend says it at the first image.
    return config


def host_imported(module_name: str) -> None:
    """A host module finished importing: activate from the environment the first
    time, later install the backend that patches it."""
    if _session is None:
        activate_from_env()
    else:
        _install_imported_hosts()


def remove() -> None:
    """Undo :func:`apply`: every patched attribute gets its original back."""
    global _session
    for module in set(_installed.values()):
        module.uninstall()
    _installed.clear()
    host_watch.uninstall()
    if _session is not None:
        _session.close()
        _session = None


def is_applied() -> bool:
    return _session is not None


def session() -> Session:
    """The applied plugin's state; raises when the plugin is not applied."""
    if _session is None:
        raise RuntimeError("the plugin is not applied: call llava_freepruner.apply(config) first")
    return _session


def set_vision_method(method) -> None:
    """Select with ``method`` (a :class:`~llava_freepruner.runtime.methods.base.VisionMethod`
    instance, registered or not) in the applied plugin; for benchmarks and experiments."""
    session().vision = method


def vision_method():
    """The vision method the applied plugin selects with (None: it does not select)."""
    return session().vision


def activate_from_env() -> None:
    """Apply the environment's configuration; a bad value ends the process
    with a message naming the variable, before any model is loaded."""
    try:
        apply(config_module.from_env())
    except (ConfigError, OSError) as err:
        raise SystemExit(f"llava_freepruner: {err}") from None


def _close_at_exit() -> None:
    # Records still waiting for a prefill time are written without one.
    if _session is not None:
        _session.close()


atexit.register(_close_at_exit)
