"""Our gunicorn hooks in front of the user's: gunicorn has one value per hook setting, so
the plugin sets a wrapper that calls its own hook and then the one the user configured.
Wrappers are marked, so setting them again (a HUP-reloaded config, a listed legacy hook)
never chains one of ours behind another."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

MARK = "_gunicorn_prometheus_hooks"


def chain(cfg: Any, name: str, ours: Callable[..., None]) -> None:
    """Set hook ``name`` to ours followed by whatever the user configured."""
    cfg.set(name, chained(ours, user_hook(cfg, name)))


def set_hook(cfg: Any, name: str, hook: Callable[..., None]) -> None:
    """Set hook ``name`` to ``hook``, one of the plugin's, past gunicorn's validator. Its
    arity check runs ``inspect.signature``, which for a compiled method (and a wrapper of
    one) parses the method's text signature with ``tokenize``: in a worker, after the fork,
    that compiles tokenize's large regular expression and triggers collections, writing to
    about 1.2 MiB of pages the worker shared with the master (docs/benchmarks.md, Memory).
    The plugin's hooks take what gunicorn passes; the tests call them as gunicorn does."""
    cfg.settings[name].value = hook


def user_hook(cfg: Any, name: str) -> Optional[Callable[..., None]]:
    """The hook the user configured for ``name``, or None (gunicorn's no-op default, or
    one of ours already)."""
    setting = cfg.settings[name]
    hook = setting.get()
    return None if hook is setting.default or getattr(hook, MARK, False) else hook


def chained(ours: Callable[..., None], theirs: Optional[Callable[..., None]]) -> Callable:
    """Ours, then theirs. ``functools.wraps`` gives the wrapper the signature of ours, so
    it passes gunicorn's arity check of the hook."""

    @functools.wraps(ours)
    def hook(*args: Any) -> None:
        ours(*args)
        if theirs is not None:
            theirs(*args)

    setattr(hook, MARK, True)
    return hook
