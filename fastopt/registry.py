"""A small registry mapping type names to classes, with mmcv/mmengine's build API, and
fastopt's four registries (filled by the modules that define what they hold).

>>> MODELS = Registry('model')
>>> @MODELS.register_module()
... class Net:
...     def __init__(self, depth=1):
...         self.depth = depth
>>> MODELS.build(dict(type='Net', depth=3)).depth
3
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import importlib.util
import inspect
from collections.abc import Iterator
from typing import Any, Callable

import torch

from .errors import UnknownTypeError

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "SCOPE_KEY",
    "Registry",
    "build_from_cfg",
    "constructor_from_cfg",
    "mmengine_registry_get",
    "scope_override",
    "within_scope",
]


def _where(obj: Any) -> str:
    """Where an object was defined, for duplicate-registration errors."""
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", repr(obj))
    try:
        file = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
        return f"{module}.{qualname} ({file}:{line})"
    except (TypeError, OSError):
        return f"{module}.{qualname}"


class Registry:
    """Maps names to classes or functions; builds them from config dicts."""

    def __init__(self, name: str, build_func: Callable[..., Any] | None = None) -> None:
        self.name = name
        self._module_dict: dict[str, Any] = {}
        self._build_func = build_func
        self._fallbacks: list[Callable[[str], Any]] = []

    def add_fallback(self, lookup: Callable[[str], Any]) -> None:
        """Search ``lookup(name)`` (None: not found) for names this registry does not hold, e.g.
        the registries of an installed host library (``fastopt.host``)."""
        self._fallbacks.append(lookup)

    def lookup(self, key: str) -> Any | None:
        """The object registered under ``key`` here, else the first fallback's answer, else None."""
        obj = self._module_dict.get(key)
        if obj is not None:
            return obj
        for fallback in self._fallbacks:
            obj = fallback(key)
            if obj is not None:
                return obj
        return None

    def __len__(self) -> int:
        return len(self._module_dict)

    def __contains__(self, key: object) -> bool:
        return key in self._module_dict

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={sorted(self._module_dict)})"

    @property
    def module_dict(self) -> dict[str, Any]:
        """The registered name -> object mapping (read it, do not mutate it)."""
        return self._module_dict

    def keys(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._module_dict)

    def get(self, key: str) -> Any | None:
        """The object registered under ``key``, or None."""
        return self._module_dict.get(key)

    def closest(self, key: str, n: int = 3) -> list[str]:
        """Registered names closest to ``key`` (for error messages)."""
        return difflib.get_close_matches(key, list(self._module_dict), n=n, cutoff=0.5)

    def _register(self, module: Any, name: str | list[str] | None, force: bool) -> None:
        if not callable(module):
            raise TypeError(f"only callables can be registered in {self.name!r}, got {module!r}")
        names = [module.__name__] if name is None else [name] if isinstance(name, str) else name
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"registry names must be str, got {n!r}")
            if not force and n in self._module_dict:
                raise KeyError(
                    f"{n!r} is already registered in {self.name!r} as "
                    f"{_where(self._module_dict[n])}; pass force=True to replace it"
                )
            self._module_dict[n] = module

    def register_module(
        self, name: str | list[str] | None = None, force: bool = False, module: Any = None
    ) -> Any:
        """Register ``module`` (call form) or return a decorator that registers its target."""
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, got {type(force).__name__}")
        if module is not None:
            self._register(module, name, force)
            return module

        def decorator(obj: Any) -> Any:
            self._register(obj, name, force)
            return obj

        return decorator

    def build(self, cfg: dict, default_args: dict | None = None) -> Any:
        """Build an object from ``cfg`` (a dict with ``type``) using this registry."""
        if self._build_func is not None:
            return self._build_func(cfg, self, default_args)
        return build_from_cfg(cfg, self, default_args)


#: The key mmengine adds to dicts a config inherits from another package
#: (``_base_ = 'mmdet::...'``): the scope their types are looked up in.
SCOPE_KEY = "_scope_"
#: The scopes :func:`within_scope` entered, innermost last: one stack per thread and per
#: asyncio task (each runs in a context of its own), so concurrent builds do not see each other's.
_SCOPES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fastopt_scopes", default=())


@contextlib.contextmanager
def within_scope(scope: str | None) -> Iterator[None]:
    """Resolve host types (``Registry.add_fallback`` lookups) under ``scope`` inside the block;
    None leaves the current scope as it is."""
    if scope is None:
        yield
        return
    token = _SCOPES.set((*_SCOPES.get(), scope))
    try:
        yield
    finally:
        _SCOPES.reset(token)


def scope_override() -> str | None:
    """The innermost scope :func:`within_scope` set in this thread or task, or None."""
    scopes = _SCOPES.get()
    return scopes[-1] if scopes else None


def mmengine_registry_get(registry: str, name: str) -> Any | None:
    """``name`` in mmengine's registry ``registry`` ('OPTIMIZERS', 'OPTIM_WRAPPERS', ...) as
    mmengine resolves it: under a config's ``_scope_`` (:func:`within_scope`) or else the current
    default scope, ``'scope.Name'`` also accepted; None when absent or mmengine is not installed."""
    if importlib.util.find_spec("mmengine") is None:
        return None
    import mmengine.optim  # mmengine's own registrations
    import mmengine.registry

    reg = getattr(mmengine.registry, registry)
    try:
        with reg.switch_scope_and_registry(scope_override()) as scoped:
            return scoped.get(name)
    except KeyError:  # a 'scope.Name' whose scope is not installed
        return None


def resolve_type(obj_type: Any, registry: Registry) -> Any:
    """Turn a ``type`` entry (name or class) into the registered object, with a clear error."""
    if isinstance(obj_type, str):
        obj = registry.lookup(obj_type)
        if obj is None:
            hint = registry.closest(obj_type)
            tail = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise UnknownTypeError(f"{obj_type!r} is not registered in the {registry.name!r} registry{tail}")
        return obj
    if callable(obj_type):
        return obj_type
    raise TypeError(f"type must be a str or a class, got {type(obj_type).__name__}")


def build_from_cfg(cfg: dict, registry: Registry, default_args: dict | None = None) -> Any:
    """Build ``registry[cfg['type']](**rest)``; ``default_args`` fill keys cfg lacks."""
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict, got {type(cfg).__name__}")
    if "type" not in cfg and (default_args is None or "type" not in default_args):
        raise KeyError(f'cfg (or default_args) must contain the key "type", got {cfg}')
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a fastopt Registry, got {type(registry).__name__}")
    args = dict(cfg)
    if default_args is not None:
        for key, value in default_args.items():
            args.setdefault(key, value)
    with within_scope(args.pop(SCOPE_KEY, None)):
        obj_cls = resolve_type(args.pop("type"), registry)
    try:
        return obj_cls(**args)
    except TypeError as exc:
        raise type(exc)(f"{getattr(obj_cls, '__name__', obj_cls)}: {exc}") from exc


OPTIMIZERS = Registry("optimizer")
OPTIMIZER_BUILDERS = Registry("optimizer builder")
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor")
OPTIM_WRAPPERS = Registry("optim wrapper")


def _register_torch_optimizers() -> list[str]:
    names = []
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        is_optimizer = inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
        if is_optimizer and obj is not torch.optim.Optimizer:
            OPTIMIZERS.register_module(module=obj)
            names.append(name)
    return names


#: Every ``torch.optim`` optimizer, under its own name (fastopt.optim then takes the names
#: SGD, Adam and AdamW for its accelerated subclasses).
TORCH_OPTIMIZERS = _register_torch_optimizers()


def constructor_from_cfg(cfg: dict, api: str) -> Any:
    """The constructor a config names, built from a copy of it: ``api='mmcv'`` reads an mmcv 1.x
    ``optimizer=`` entry, ``api='mmengine'`` an ``optim_wrapper=`` entry (``constructor`` and
    ``paramwise_cfg`` taken out, the rest handed to the constructor)."""
    if api not in ("mmcv", "mmengine"):
        raise ValueError(f"api must be 'mmcv' or 'mmengine', got {api!r}")
    rest = copy.deepcopy(cfg)
    paramwise_cfg = rest.pop("paramwise_cfg", None)
    scope = rest.get(SCOPE_KEY)  # stays in the cfg: the wrapper is built under it too
    if api == "mmengine":
        ctor_type = rest.pop("constructor", "DefaultOptimWrapperConstructor")
        with within_scope(scope):
            return build_from_cfg(dict(type=ctor_type, optim_wrapper_cfg=rest, paramwise_cfg=paramwise_cfg),
                                  OPTIM_WRAPPER_CONSTRUCTORS)
    ctor_type = rest.pop("constructor", "DefaultOptimizerConstructor")
    with within_scope(scope):
        return build_from_cfg(dict(type=ctor_type, optimizer_cfg=rest, paramwise_cfg=paramwise_cfg),
                              OPTIMIZER_BUILDERS)
