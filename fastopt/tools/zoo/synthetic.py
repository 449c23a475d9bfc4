"""Synthetic giants: models of any tensor count (to 1M and beyond), built fast."""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import Tensor, nn

from .bricks import Scale


class SyntheticBlock(nn.Module):
    """A 4-tensor block of :func:`synthetic`; the layer kinds cycle per stage."""

    KINDS = (('conv', 'bn'), ('dwconv', 'gn'), ('fc', 'norm'))

    def __init__(self, kind: int, channels: int = 4) -> None:
        super().__init__()
        self.kind = kind
        if kind == 0:
            self.conv = nn.Conv2d(channels, channels, 1)
            # No running-stat buffers: three fewer tensors to allocate per block.
            self.bn = nn.BatchNorm2d(channels, track_running_stats=False)
        elif kind == 1:
            self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
            self.gn = nn.GroupNorm(2, channels)
        elif kind == 2:
            self.fc = nn.Linear(channels, channels)
            self.norm = nn.LayerNorm(channels)
        else:
            raise ValueError(f'kind must be 0, 1 or 2, got {kind}')

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block's two layers to an NCHW tensor."""
        layer_name, norm_name = self.KINDS[self.kind]
        layer, norm = self._modules[layer_name], self._modules[norm_name]
        if self.kind == 2:
            return norm(layer(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return norm(layer(x))


class SyntheticStage(nn.Module):
    """A stage of :func:`synthetic`: ``blocks.{j}``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        """Run the blocks in order."""
        for block in self.blocks:
            x = block(x)
        return x


class SyntheticNet(nn.Module):
    """Giant model of :func:`synthetic`: ``stem``, ``stages.{i}.blocks.{j}``, ``head``."""

    def __init__(self, with_ends: bool = True, channels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1) if with_ends else None
        self.stages = nn.ModuleList()
        self.head = nn.Linear(channels, 10) if with_ends else None
        self.scales = nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        """Stem, stages, global pool, head."""
        if self.stem is None or self.head is None:
            return x
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        out = self.head(x.mean(dim=(2, 3)))
        for scale in self.scales:
            out = scale(out)
        return out


def _shell_template(proto: nn.Module) -> tuple[type, dict[str, Any], tuple[str, ...]]:
    """Capture a module's ``__dict__`` and which entries are containers to copy."""
    state = dict(proto.__dict__)
    containers = tuple(
        k for k, v in state.items()
        if isinstance(v, (dict, set, list))
        and k not in ('_parameters', '_buffers', '_modules'))
    return type(proto), state, containers


def _new_shell(
    template: tuple[type, dict[str, Any], tuple[str, ...]],
    params: dict[str, nn.Parameter],
    buffers: dict[str, Tensor | None],
    modules: dict[str, nn.Module],
) -> nn.Module:
    """Create a module of the template's class without running ``__init__``."""
    cls, state, containers = template
    module = object.__new__(cls)
    new_state = state.copy()
    for key in containers:
        new_state[key] = state[key].copy()
    new_state['_parameters'] = params
    new_state['_buffers'] = buffers
    new_state['_modules'] = modules
    object.__setattr__(module, '__dict__', new_state)
    return module


def _fast_blocks(kind: int, count: int) -> list[nn.Module]:
    """``count`` fresh SyntheticBlocks of ``kind`` built by cloning a prototype.

    ``__init__`` (and its kaiming init) is skipped: each module is a copy of the
    prototype's ``__dict__`` with fresh hook containers and fresh parameters, so
    modules stay independent (hooks, state_dict, ``.to()``) at a few µs each.
    """
    proto = SyntheticBlock(kind)
    block_tpl = _shell_template(proto)
    leaves = []
    for leaf_name, leaf in proto._modules.items():
        assert leaf is not None
        shapes = [(pname, tuple(p.shape), pname == 'weight' and leaf_name in
                   ('bn', 'gn', 'norm')) for pname, p in leaf._parameters.items()]
        buffers = [(bname, b) for bname, b in leaf._buffers.items()]
        leaves.append((leaf_name, _shell_template(leaf), shapes, buffers))
    blocks: list[nn.Module] = []
    # One torch op per tensor: small-op dispatch (~2-5 µs) dominates the cost.
    normal, make_param, param_cls = torch.normal, torch.Tensor._make_subclass, nn.Parameter
    # torch.normal ignores a ``with torch.device(...)`` block: the device is named outright
    device = torch.get_default_device()

    def draw(mean: float, shape: tuple[int, ...]) -> Tensor:
        if device.type == 'meta':  # no values to draw, and torch.normal takes ~1 ms there
            return torch.empty(shape, device=device)
        return normal(mean, 0.02, shape, device=device)

    for _ in range(count):
        children: dict[str, nn.Module] = {}
        for leaf_name, tpl, shapes, buffers in leaves:
            params = {}
            for pname, shape, is_norm_weight in shapes:
                data = draw(1.0 if is_norm_weight else 0.0, shape)
                params[pname] = make_param(param_cls, data, True)
            bufs = {bname: None if b is None else b.clone() for bname, b in buffers}
            children[leaf_name] = _new_shell(tpl, params, bufs, {})
        blocks.append(_new_shell(block_tpl, {}, {}, children))
    return blocks


#: parameter elements of one :class:`SyntheticBlock` of each kind (4 channels)
_BLOCK_NUMEL = (4 * 4 + 4 + 2 * 4, 4 * 9 + 4 + 2 * 4, 4 * 4 + 4 + 2 * 4)
#: parameter elements of the ``stem`` (3x3 conv, 3 -> 4) and ``head`` (Linear 4 -> 10)
_ENDS_NUMEL = 3 * 4 * 9 + 4 + 4 * 10 + 10


def _layout(num_tensors: int, blocks_per_stage: int) -> tuple[bool, list[int], int]:
    """(whether there are a stem and head, blocks per stage, leftover 0-d scales)."""
    if num_tensors < 0:
        raise ValueError(f'num_tensors must be >= 0, got {num_tensors}')
    if blocks_per_stage < 1:
        raise ValueError(f'blocks_per_stage must be >= 1, got {blocks_per_stage}')
    with_ends = num_tensors >= 4
    num_blocks, num_scales = divmod(num_tensors - 4 if with_ends else num_tensors, 4)
    num_stages = -(-num_blocks // blocks_per_stage)
    sizes = [min(blocks_per_stage, num_blocks - i * blocks_per_stage) for i in range(num_stages)]
    return with_ends, sizes, num_scales


def synthetic_numel(num_tensors: int, blocks_per_stage: int = 64) -> int:
    """Parameter elements of ``synthetic(num_tensors, blocks_per_stage)``, without building it."""
    with_ends, sizes, num_scales = _layout(num_tensors, blocks_per_stage)
    blocks = sum(size * _BLOCK_NUMEL[i % 3] for i, size in enumerate(sizes))
    return blocks + num_scales + (_ENDS_NUMEL if with_ends else 0)


def synthetic(num_tensors: int, blocks_per_stage: int = 64,
              seed: int = 0) -> SyntheticNet:
    """A model with exactly ``num_tensors`` tiny parameter tensors (1M in seconds).

    Layout: ``stem`` (Conv2d, 2 tensors), ``stages.{i}.blocks.{j}`` (4 tensors
    each, ``blocks_per_stage`` per stage; stage ``i`` uses kind ``i % 3``:
    ``conv``+``bn`` (BatchNorm2d without running stats), depthwise ``dwconv``+
    ``gn``, or ``fc``+``norm`` (LayerNorm)), ``head`` (Linear, 2 tensors) and
    0-3 leftover 0-d ``scales.{k}.scale``. Values are N(0, 0.02) (norm weights
    N(1, 0.02)), deterministic for ``seed``; the global RNG is left untouched. Built on
    the default device (a ``with torch.device(...)`` block's, else the CPU).
    """
    with_ends, sizes, num_scales = _layout(num_tensors, blocks_per_stage)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of new container objects; collection would dominate
    try:
        device = torch.get_default_device()
        forked: list[int] = []  # the RNGs put back afterwards: the CPU's, and a CUDA device's
        if device.type == 'cuda':
            forked = [torch.cuda.current_device() if device.index is None else device.index]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            net = SyntheticNet(with_ends)
            pools = [iter(_fast_blocks(kind, sum(sizes[kind::3]))) for kind in range(3)]
            for _ in range(num_scales):
                net.scales.append(Scale(1.0))
        stage_tpl = _shell_template(SyntheticStage())
        list_tpl = _shell_template(nn.ModuleList())
        stages: dict[str, nn.Module] = {}
        for i, size in enumerate(sizes):
            pool = pools[i % 3]
            blocks = {str(j): next(pool) for j in range(size)}
            stage_list = _new_shell(list_tpl, {}, {}, blocks)
            stages[str(i)] = _new_shell(stage_tpl, {}, {}, {'blocks': stage_list})
        net.stages._modules.update(stages)
    finally:
        if gc_was_enabled:
            gc.enable()
    return net
