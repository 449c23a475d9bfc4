"""Detector/segmenter-shaped models with the real OpenMMLab parameter names.

Every builder returns a plain ``torch.nn`` module tree whose ``named_parameters()``
match the real mmdetection 3.x / mmsegmentation / mmcv 2.x model: the same
parameter names and order, the same module classes (BatchNorm2d, SyncBatchNorm,
GroupNorm, LayerNorm, depthwise Conv2d, Linear, Embedding, raw Parameters such as
Swin ``relative_position_bias_table`` or 0-d ``Scale.scale``), the same
``requires_grad`` flags (frozen stages) and the real tensor count at full depth.
Channel counts are scaled by ``width`` (rounded so GroupNorm groups and attention
heads still divide them) so that a model builds in milliseconds; ``width=1.0``
gives the real shapes. CNN parts, Swin and ViT backbones have a ``forward``; the
RoI heads run on pooled RoI features; DETR-style transformer heads have none.

>>> from fastopt.tools.zoo import build, count_tensors
>>> count_tensors(build('faster_rcnn_r50_fpn'))
189

The package is laid out like its users' libraries: ``bricks`` (norm/conv/transformer
building blocks), ``backbones`` (ResNet, MobileNetV2), ``transformers`` (Swin, ViTDet's ViT,
mmseg's ViT), ``necks``, ``heads``, ``detectors``, ``catalogue`` (one builder per model with
its real optimizer config; ``MODELS``, ``build`` and ``counts``; the giants ``giant_100k`` and
``giant_1m``, whose counts are known without building them) and ``synthetic`` (models of any size).
"""

from __future__ import annotations

from .bricks import DEFAULT_WIDTH
from .catalogue import MODELS, ZooModel, build, count_numel, count_tensors, counts, giant
from .synthetic import synthetic, synthetic_numel

__all__ = [
    'DEFAULT_WIDTH',
    'MODELS',
    'ZooModel',
    'build',
    'count_numel',
    'count_tensors',
    'counts',
    'giant',
    'synthetic',
    'synthetic_numel',
]
