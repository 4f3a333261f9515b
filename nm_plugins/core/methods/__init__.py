"""N:M training methods as registered plugins (see :mod:`.base` for the contract).

``register_method`` adds a method class under its name; ``make_method`` builds one from a name (or passes an
instance through) with its settings; ``method_names`` lists what is registered. Every module of this package registers its
method(s) on import of the package; a third-party method registers on import of its own module.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import NMMethod

_REGISTRY: dict = {}


def register_method(name: str):
    """Class decorator: register an :class:`NMMethod` subclass under ``name`` (a name taken twice raises)."""
    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, NMMethod)):
            raise TypeError(f"register_method({name!r}): {cls!r} is not a subclass of NMMethod")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"N:M method {name!r} is already registered (by {_REGISTRY[name].__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def method_names() -> tuple:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered as ``name``; ValueError naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sparsity method {name!r}: expected one of {', '.join(_REGISTRY)}") from None


def make_method(method, **settings) -> NMMethod:
    """An :class:`NMMethod` from a registered name and its settings, or ``method`` itself when it is one
    (settings then must be empty)."""
    if isinstance(method, NMMethod):
        if settings:
            raise ValueError(f"make_method: settings {sorted(settings)} given with a method object {method.describe()}")
        return method
    return method_class(method)(**settings)


def _register_package_methods() -> None:
    """Import every module of this package: each registers the method(s) it defines; the built-ins first (so
    :func:`method_names` lists srste, ste, fixed, dense, asp before the others, whatever their module names)."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name != "base")
    for name in sorted(names, key=lambda n: n != "builtin"):
        importlib.import_module(f"{__name__}.{name}")


_register_package_methods()

__all__ = ["NMMethod", "register_method", "method_names", "method_class", "make_method"]
