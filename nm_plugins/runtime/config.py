"""Configs every trainer reads: one YAML reader for the whole project, files with a ``base:`` underneath,
documented defaults merged key by key, and ``section.key=value`` command-line overrides.

The reader is YAML's safe loader without YAML 1.1's base-60 numbers (YAML 1.2 has none): ``2:4``, ``1:16``
stay the strings they look like instead of becoming 124 and 76, in files and in overrides alike.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose int and float resolvers leave out the base-60 (``1:30``) forms."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(  # YAML 1.1's float forms (3e-3 stays a string, as before) less the base-60 one
    _FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                          |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """The YAML document in ``text`` (safe types only), with ``N:M`` and other colon forms kept as strings."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def read_yaml(path: "str | Path") -> dict:
    """A config file's mapping, with its ``base:`` file (a path relative to it) merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = load_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = deep_update(read_yaml(path.parent / base), data)
    return data


def deep_update(base: dict, new: dict) -> dict:
    """``base`` updated by ``new``, nested mappings merged key by key (no key checks)."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge_config(base: dict, new: dict, where: str = "", open_keys: tuple = ("kwargs", "method_args")) -> dict:
    """``base`` updated by ``new`` recursively; a key ``base`` does not have raises ValueError naming it.
    Mappings under a key in ``open_keys`` (a key name, or a dotted path such as ``data.proxy``) are
    free-form: any key, merged key by key."""
    out = copy.deepcopy(base)
    here = where.rstrip(".")
    free = here.rsplit(".", 1)[-1] in open_keys or here in open_keys
    for key, value in new.items():
        if key not in base:
            if free:
                out[key] = copy.deepcopy(value)
                continue
            raise ValueError(f"config: unknown key '{where}{key}'; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config: {where}{key} must be a mapping, got {value!r}")
            out[key] = merge_config(base[key], value, f"{where}{key}.", open_keys)
        else:
            out[key] = copy.deepcopy(value)
    return out


def override_tree(item: str) -> dict:
    """``section.key=value`` as the nested mapping it sets (value read as YAML; empty = None)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value (e.g. optim.epochs=2)")
    path, _, raw = item.partition("=")
    value = load_yaml(raw) if raw != "" else None
    tree: dict = {}
    node = tree
    keys = path.strip().split(".")
    for key in keys[:-1]:
        node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return tree


def apply_override(config: dict, item: str, open_keys: tuple = ("kwargs", "method_args")) -> dict:
    """Apply one ``section.key=value`` override (value read as YAML) and return the new config."""
    return merge_config(config, override_tree(item), "", open_keys)


def check_method(sp: dict, allowed=None, where: str = "sparsity") -> None:
    """ValueError naming ``<where>.method`` when it is not a registered N:M method (or not in ``allowed``), or
    ``<where>.method_args`` when the method has no such setting (``sp``: the config section with method,
    method_args and decay)."""
    from nm_plugins.core import build_method, method_names

    names = method_names() if allowed is None else tuple(n for n in method_names() if n in allowed)
    if sp["method"] not in names:
        raise ValueError(f"config: {where}.method {sp['method']!r} is not one of {', '.join(names)}")
    if sp.get("method_args") is not None and not isinstance(sp["method_args"], dict):
        raise ValueError(f"config: {where}.method_args must be a mapping, got {sp['method_args']!r}")
    try:
        build_method(sp["method"], sp.get("method_args") or None, sp["decay"])
    except ValueError as err:
        raise ValueError(f"config: {where}.method_args: {err}") from None
