"""Where a model and its optimizer config come from: one resolver for every command.

A *source* is one of

- a config file (``.py``/``.json``/``.yaml``, or ``mmdet::swin/x.py`` for one an installed
  package ships): an OpenMMLab 2.x/3.x config read with mmengine's
  ``Config`` (``_base_`` inheritance, ``custom_imports``, ``--cfg-options key=value``), whose
  ``model`` is built by the installed host library's registry under the config's scope
  (``default_scope``, or the ``scope.Type`` prefix of ``model.type``); a fastopt-style config
  whose ``model`` is ``'pkg.module:callable'`` (or ``dict(type='pkg.module:callable', ...)``)
  works too, with or without mmengine;
- ``timm:NAME``, ``torchvision:NAME`` or ``pkg.module:callable``;
- a bundled model name (``fastopt models``).

Pretrained weights are never loaded: ``pretrained`` entries are switched off, ``init_weights``
is never called. A model that asks for a process group while it builds (mmcv's SyncBN) gets
a one-process gloo group. Models are built on the meta device where their constructors allow it (no
memory, no initialisation cost) and on the CPU otherwise.

>>> src = resolve('retinanet_r50_fpn')
>>> src.kind, src.api
('zoo', 'mmengine')
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import runpy
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["DEFAULT_OPTIM_WRAPPER", "Source", "SourceError", "buildable_here", "load_config", "load_model",
           "optim_cfg_of", "resolve"]

#: The optimizer config a model-only source (``timm:``, ``torchvision:``, ``pkg.mod:fn``) gets:
#: a common transformer-era recipe; ``--cfg-options optim_wrapper.optimizer.lr=...`` edits it.
DEFAULT_OPTIM_WRAPPER: dict[str, Any] = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)

_CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")


def log(msg: str) -> None:
    """Progress and notes on stderr, so tables and JSON on stdout stay clean."""
    print(msg, file=sys.stderr, flush=True)


class SourceError(Exception):
    """A model source or config that cannot be used; the message is one line for the user
    (the command-line tools print it and exit with status 2)."""


# ------------------------------------------------------------------ configs
def _merge_options(cfg: dict, cfg_options: dict[str, Any] | None) -> dict:
    """Set each dotted ``key=value`` of ``cfg_options`` in ``cfg`` (list items by index), as
    mmengine's ``Config.merge_from_dict`` does for the configs it reads; returns ``cfg``."""
    for key, value in (cfg_options or {}).items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return cfg


def _parse_value(text: str) -> Any:
    """A ``--cfg-options`` value as OpenMMLab's tools read it: numbers, None/True/False,
    ``[a,b]`` / ``(a,b)`` lists and tuples, anything else a string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.lower() in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[text.lower()]
    if "," in text and not text.startswith(("[", "(")):
        return [_parse_value(t) for t in text.split(",")]
    return text


def parse_cfg_options(items: list[str] | None) -> dict[str, Any]:
    """``['a.b=1', 'c=x']`` -> ``{'a.b': 1, 'c': 'x'}`` (the ``--cfg-options`` syntax)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SourceError(f"--cfg-options takes key=value pairs, got {item!r}")
        out[key] = _parse_value(value)
    return out


def _mmengine_config() -> Any:
    try:
        from mmengine.config import Config
    except ImportError:
        return None
    return Config


def load_config(path: str, cfg_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config at ``path`` as a plain dict, ``cfg_options`` (dotted keys) merged in.

    mmengine's ``Config`` reads it when installed (``_base_``, ``custom_imports``, the
    ``{{_base_.x}}`` syntax); without mmengine a plain Python config is executed."""
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such config file")
    Config = _mmengine_config()
    if Config is not None:
        try:
            cfg = Config.fromfile(path)
        except ImportError as exc:  # custom_imports of a package that is not installed
            raise SourceError(f"{path}: {exc}") from exc
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        return cfg.to_dict()
    if not path.endswith(".py"):
        raise SourceError(f"{path}: reading a non-Python config needs mmengine installed")
    ns = runpy.run_path(path)
    if "_base_" in ns:
        raise SourceError(f"{path}: `_base_` inheritance needs mmengine installed")
    out = {k: v for k, v in ns.items() if not k.startswith("__") and not callable(v)
           and type(v).__name__ != "module"}
    return _merge_options(out, cfg_options)


def optim_cfg_of(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """``(api, optimizer config, grad clip)`` of a config: ``optim_wrapper=`` (mmengine, 3.x
    generation) wins over ``optimizer=`` + ``optimizer_config=dict(grad_clip=...)`` (mmcv 1.x,
    2.x generation)."""
    wrapper = cfg.get("optim_wrapper")
    if isinstance(wrapper, dict):
        return "mmengine", wrapper, wrapper.get("clip_grad")
    optimizer = cfg.get("optimizer")
    if isinstance(optimizer, dict):
        hook = cfg.get("optimizer_config") or {}
        return "mmcv", optimizer, hook.get("grad_clip") if isinstance(hook, dict) else None
    raise SourceError("the config has neither `optim_wrapper=` (mmengine) nor `optimizer=` (mmcv 1.x)")


def buildable_here(api: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``cfg`` as this machine can build it, and a note when it had to change: mmengine's
    ``AmpOptimWrapper`` refuses to build without a GPU (or NPU/MLU), so on such a machine the
    optimizer is wrapped in ``OptimWrapper`` instead (the param groups do not depend on it)."""
    if api != "mmengine" or cfg.get("type") != "AmpOptimWrapper" or torch.cuda.is_available():
        return cfg, None
    plain = {k: v for k, v in cfg.items() if k not in ("loss_scale", "dtype", "use_fsdp")}
    plain["type"] = "OptimWrapper"
    return plain, "AmpOptimWrapper needs a CUDA device: built with OptimWrapper instead"


# ------------------------------------------------------------------ models
def resolve_callable(ref: str) -> Callable[..., Any]:
    """'package.module:function' (or 'package.module.function') -> the callable."""
    if ":" in ref:
        mod, _, attr = ref.partition(":")
    else:
        mod, _, attr = ref.rpartition(".")
    if not mod or not attr:
        raise SourceError(f"model builder {ref!r} must be 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as exc:
        raise SourceError(f"model builder {ref!r}: cannot import {mod!r} ({exc})") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SourceError(f"model builder {ref!r}: {mod!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise SourceError(f"model builder {ref!r} is not callable")
    return obj


def _no_pretrained(node: Any) -> Any:
    """A copy of a model config with every pretrained-weight switch turned off."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "pretrained" and value:
                value = False if isinstance(value, bool) else None
            elif key == "init_cfg" and isinstance(value, dict) and value.get("type") == "Pretrained":
                value = None
            else:
                value = _no_pretrained(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_no_pretrained(v) for v in node]
    if isinstance(node, tuple):
        return tuple(_no_pretrained(v) for v in node)
    return node


def _scope_of(cfg: dict[str, Any], path: str) -> str:
    scope = cfg.get("default_scope")
    model_type = cfg["model"].get("type") if isinstance(cfg["model"], dict) else None
    if isinstance(model_type, str) and "." in model_type:
        scope = model_type.split(".", 1)[0]
    if not scope:
        raise SourceError(f"{path}: the config names no scope (no `default_scope`, no 'scope.Type' model "
                          "type); add --cfg-options default_scope=mmdet (or mmpretrain, mmseg, ...)")
    return str(scope)


#: scope -> PyPI distribution, for the "not installed" message
_DISTRIBUTIONS = {"mmseg": "mmsegmentation", "mmaction": "mmaction2", "mmpretrain": "mmpretrain",
                  "mmdet": "mmdet", "mmdet3d": "mmdet3d", "mmpose": "mmpose", "mmocr": "mmocr",
                  "mmrotate": "mmrotate", "mmtrack": "mmtrack", "mmcls": "mmcls", "mmyolo": "mmyolo"}


def _import_scope(scope: str, path: str) -> None:
    if importlib.util.find_spec(scope) is None:
        dist = _DISTRIBUTIONS.get(scope, scope)
        raise SourceError(f"{path}: the config's scope {scope!r} needs the {dist!r} package, which is not "
                          f"installed (pip install {dist})")
    try:
        importlib.import_module(f"{scope}.registry")
    except ModuleNotFoundError as exc:
        if exc.name != f"{scope}.registry":
            raise SourceError(f"{path}: importing {scope!r} failed: {exc}") from exc
        raise SourceError(f"{path}: {scope!r} is not an OpenMMLab 2.x library (it has no "
                          f"{scope}.registry)") from exc
    except Exception as exc:  # a host library that does not import beside this torch/mmcv
        raise SourceError(f"{path}: importing {scope!r} failed: {type(exc).__name__}: {exc}") from exc


def _build_openmmlab(cfg: dict[str, Any], path: str, device: str) -> nn.Module:
    """Build ``cfg['model']`` with mmengine's MODELS registry under the config's scope."""
    try:
        from mmengine.config import ConfigDict
        from mmengine.registry import MODELS, DefaultScope, init_default_scope
    except ImportError:
        raise SourceError(f"{path}: building an OpenMMLab model needs mmengine installed "
                          "(pip install mmengine)") from None
    scope = _scope_of(cfg, path)
    _import_scope(scope, path)
    model_cfg = ConfigDict(_no_pretrained(copy.deepcopy(cfg["model"])))  # host models read attributes
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope), MODELS.switch_scope_and_registry(scope) as registry:
        if isinstance(model_cfg.get("type"), str) and registry.get(model_cfg["type"]) is None:
            raise SourceError(f"{path}: model type {model_cfg['type']!r} is not registered under scope "
                              f"{scope!r}")
        # a fresh copy per attempt: some host models edit their sub-configs while building
        return _on_device(lambda: registry.build(copy.deepcopy(model_cfg)), device)


@contextlib.contextmanager
def _single_process_group() -> Iterator[bool]:
    """A one-process gloo group for the block (models with mmcv's SyncBN ask for the world size
    while they build), destroyed after it; yields False when torch.distributed cannot start
    one or a group is already running (the caller's, left alone)."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        yield False
        return
    log("the model asks for a process group while it builds: a one-process gloo group for the build")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def _built(build: Callable[[], nn.Module]) -> nn.Module:
    try:
        return build()
    except (ValueError, RuntimeError) as exc:
        if "process group has not been initialized" not in str(exc):
            raise
        error = exc
    with _single_process_group() as started:
        if not started:
            raise error
        return build()


def _on_device(build: Callable[[], nn.Module], device: str) -> nn.Module:
    """``build()`` on ``device``; 'auto' tries the meta device and falls back to the CPU."""
    if device == "auto":
        try:
            with torch.device("meta"):
                return _built(build)
        except Exception:  # a constructor that computes with its tensors (item(), numpy())
            device = "cpu"
    with torch.device(device):
        return _built(build)


@dataclass
class Source:
    """A resolved model source: how to build the model and the optimizer config that goes
    with it (``api`` is 'mmengine' for ``optim_wrapper=`` configs, 'mmcv' for 1.x ones)."""

    label: str
    kind: str  # 'config', 'zoo', 'timm', 'torchvision', 'callable'
    cfg: dict[str, Any] = field(default_factory=dict)
    builder: Callable[[str], nn.Module] | None = None

    @property
    def optim(self) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """``(api, optimizer config, grad clip)`` (see :func:`optim_cfg_of`)."""
        try:
            return optim_cfg_of(self.cfg)
        except SourceError as exc:  # a config file without an optimizer (model sources have one)
            raise SourceError(f"{self.label}: {exc}") from None

    @property
    def api(self) -> str:
        """'mmengine' or 'mmcv': whose semantics the optimizer config is read with."""
        return self.optim[0]

    def build(self, device: str = "auto") -> nn.Module:
        """The model, on ``device`` ('auto': meta where possible, else CPU; 'cpu'; 'cuda')."""
        if self.builder is None:
            raise SourceError(f"{self.label}: no model to build")
        return self.builder(device)


def _model_only(label: str, kind: str, make: Callable[[], nn.Module],
                cfg_options: dict[str, Any] | None) -> Source:
    cfg = _merge_options({"optim_wrapper": copy.deepcopy(DEFAULT_OPTIM_WRAPPER)}, cfg_options)
    return Source(label, kind, cfg, lambda device: _on_device(make, device))


def _timm(name: str) -> Callable[[], nn.Module]:
    try:
        import timm
    except ImportError:
        raise SourceError(f"timm:{name}: timm is not installed (pip install timm)") from None
    if name not in timm.list_models():
        raise SourceError(f"timm:{name}: unknown timm model (timm.list_models() lists them)")
    return lambda: timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    try:
        import torchvision.models as tvm
    except Exception as exc:
        raise SourceError(f"torchvision:{name}: torchvision does not import here ({type(exc).__name__}: "
                          f"{exc})") from None
    if name not in tvm.list_models():
        raise SourceError(f"torchvision:{name}: unknown torchvision model (torchvision.models.list_models())")
    return lambda: tvm.get_model(name, weights=None)


def _zoo_source(name: str, width: float | None, cfg_options: dict[str, Any] | None) -> Source:
    zoo = importlib.import_module(".zoo", __package__)
    spec = zoo.MODELS[name]
    wrapper: dict[str, Any] = dict(type="OptimWrapper", optimizer=dict(spec.optimizer))
    if spec.paramwise_cfg:
        wrapper["paramwise_cfg"] = copy.deepcopy(spec.paramwise_cfg)
    cfg = _merge_options({"optim_wrapper": wrapper}, cfg_options)
    kwargs = {} if width is None else {"width": width}
    return Source(name, "zoo", cfg, lambda device: _on_device(lambda: zoo.build(name, **kwargs),
                                                              "cpu" if device == "auto" else device))


def _config_source(path: str, cfg_options: dict[str, Any] | None, label: str | None = None) -> Source:
    cfg = load_config(path, cfg_options)
    label = path if label is None else label
    if "model" not in cfg or cfg["model"] is None:
        raise SourceError(f"{label}: the config has no `model=` entry")
    spec = cfg["model"]
    if isinstance(spec, str) or (isinstance(spec, dict) and ":" in str(spec.get("type", ""))):
        if isinstance(spec, str):
            fn, kwargs = resolve_callable(spec), {}
        else:
            fn = resolve_callable(spec["type"])
            kwargs = {k: v for k, v in spec.items() if k != "type"}
        return Source(label, "config", cfg, lambda device: _on_device(lambda: fn(**kwargs), device))
    if not isinstance(spec, dict) or "type" not in spec:
        raise SourceError(f"{label}: `model` must be a dict with a `type` (or 'pkg.module:callable')")
    return Source(label, "config", cfg, lambda device: _build_openmmlab(cfg, label, device))


def shipped_config(ref: str) -> str:
    """``'mmdet::swin/x.py'`` -> the path of that config inside the installed package
    (``<package>/.mim/configs/swin/x.py``, where OpenMMLab wheels ship their configs)."""
    package, _, relative = ref.partition("::")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"{ref}: package {package!r} is not installed")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, ".mim", "configs", relative)
        if os.path.isfile(path):
            return path
    raise SourceError(f"{ref}: {package} ships no config {relative!r} (under {package}/.mim/configs)")


def resolve(source: str, cfg_options: dict[str, Any] | None = None, width: float | None = None) -> Source:
    """Turn a source string (config path, ``pkg::path`` of a config a package ships,
    ``timm:``/``torchvision:`` name, ``pkg.mod:callable``, zoo name) into a :class:`Source`;
    errors are :class:`SourceError`."""
    if not isinstance(source, str) or not source:
        raise SourceError(f"a model source must be a non-empty string, got {source!r}")
    if "::" in source:
        return _config_source(shipped_config(source), cfg_options, label=source)
    if source.endswith(_CONFIG_SUFFIXES) or os.path.isfile(source):
        return _config_source(source, cfg_options)
    prefix, sep, name = source.partition(":")
    if sep and prefix == "timm":
        return _model_only(source, "timm", _timm(name), cfg_options)
    if sep and prefix == "torchvision":
        return _model_only(source, "torchvision", _torchvision(name), cfg_options)
    if sep:
        fn = resolve_callable(source)
        return _model_only(source, "callable", fn, cfg_options)
    zoo = importlib.import_module(".zoo", __package__)
    if source in zoo.MODELS:
        return _zoo_source(source, width, cfg_options)
    hint = ""
    import difflib

    close = difflib.get_close_matches(source, list(zoo.MODELS), n=1)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    raise SourceError(f"{source!r} is neither a config file, 'timm:NAME', 'torchvision:NAME', "
                      f"'pkg.module:callable' nor a bundled model (`fastopt models`){hint}")


def load_model(source: str, cfg_options: dict[str, Any] | None = None, device: str = "auto",
               width: float | None = None) -> nn.Module:
    """Build the model a source names (see :func:`resolve`), without pretrained weights;
    ``device='auto'`` builds on the meta device where the model allows it, else on the CPU. A
    model that asks for a process group while it builds gets a one-process gloo group for the
    build, destroyed afterwards (a group the caller started is used as is)."""
    if device not in ("auto", "meta", "cpu") and not device.startswith("cuda"):
        raise SourceError(f"device must be 'auto', 'meta', 'cpu' or 'cuda[:N]', got {device!r}")
    return resolve(source, cfg_options, width).build(device)
