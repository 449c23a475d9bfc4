"""The catalogue: one builder per model, its real optimizer config, ``MODELS`` and ``build``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .backbones import MobileNetV2, ResNet
from .bricks import DEFAULT_WIDTH, bn_cfg, gn_cfg, resnet_norm_cfg, scaled, scaled_head_dim, sync_bn_cfg
from .detectors import (
    DINO,
    FCOS,
    SSD,
    CascadeRCNN,
    EncoderDecoder,
    FasterRCNN,
    Mask2Former,
    MaskRCNN,
    RetinaNet,
    TwoStageDetector,
)
from .heads import (
    CascadeRoIHead,
    FCNHead,
    FCNMaskHead,
    FCOSHead,
    Mask2FormerHead,
    RetinaHead,
    RPNHead,
    Shared2FCBBoxHead,
    Shared4Conv1FCBBoxHead,
    SSDHead,
    StandardRoIHead,
    UPerHead,
)
from .necks import FPN, ChannelMapper, MultiLevelNeck, SimpleFPN, SSDNeck
from .synthetic import synthetic, synthetic_numel
from .transformers import SwinTransformer, VisionTransformer, ViT


def _swin_l(width: float, window_size: int, pretrain_img_size: int,
            use_abs_pos_embed: bool = False, frozen_stages: int = -1) -> SwinTransformer:
    """Swin-L (embed 192, depths 2-2-18-2, heads 6-12-24-48) at ``width``."""
    embed = 6 * scaled_head_dim(32, width)
    return SwinTransformer(
        pretrain_img_size=pretrain_img_size, embed_dims=embed, window_size=window_size,
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
        use_abs_pos_embed=use_abs_pos_embed, frozen_stages=frozen_stages)


def _rpn(channels: int, num_convs: int = 1) -> RPNHead:
    """mmdet RPNHead with 3 anchors per location."""
    return RPNHead(channels, channels, 3, num_convs)


def _two_stage_resnet(
    cls: type[TwoStageDetector], depth: int, width: float, num_classes: int,
    with_mask: bool, frozen_stages: int, norm: str,
) -> TwoStageDetector:
    """Faster/Mask R-CNN with a ResNet-FPN backbone."""
    backbone = ResNet(depth, base_channels=scaled(64, width), frozen_stages=frozen_stages,
                      norm_cfg=resnet_norm_cfg(norm))
    c = scaled(256, width)
    neck = FPN(backbone.out_channels, c, 5)
    bbox_head = Shared2FCBBoxHead(in_channels=c, fc_out_channels=scaled(1024, width),
                                  num_classes=num_classes)
    mask_head = (FCNMaskHead(4, c, c, num_classes) if with_mask else None)
    return cls(backbone, neck, _rpn(c), StandardRoIHead(bbox_head, mask_head, c))


def faster_rcnn_r50_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                        frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """Faster R-CNN R-50-FPN (mmdet ``faster-rcnn_r50_fpn_1x_coco``)."""
    return _two_stage_resnet(FasterRCNN, 50, width, num_classes, False,
                             frozen_stages, norm)


def mask_rcnn_r101_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                       frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """Mask R-CNN R-101-FPN (mmdet ``mask-rcnn_r101_fpn_1x_coco``)."""
    return _two_stage_resnet(MaskRCNN, 101, width, num_classes, True,
                             frozen_stages, norm)


def retinanet_r50_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                      frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """RetinaNet R-50-FPN (mmdet ``retinanet_r50_fpn_1x_coco``)."""
    backbone = ResNet(50, base_channels=scaled(64, width), frozen_stages=frozen_stages,
                      norm_cfg=resnet_norm_cfg(norm))
    c = scaled(256, width)
    neck = FPN(backbone.out_channels, c, 5, start_level=1, add_extra_convs='on_input')
    return RetinaNet(backbone, neck, RetinaHead(num_classes, c, c))


def fcos_r50_caffe_fpn_gn(width: float = DEFAULT_WIDTH,
                          num_classes: int = 80) -> nn.Module:
    """FCOS R-50-caffe FPN, GN head (``fcos_r50-caffe_fpn_gn-head_1x_coco``)."""
    backbone = ResNet(50, base_channels=scaled(64, width), style='caffe',
                      frozen_stages=1, norm_cfg=bn_cfg(requires_grad=False))
    c = scaled(256, width)
    neck = FPN(backbone.out_channels, c, 5, start_level=1,
               add_extra_convs='on_output', relu_before_extra_convs=True)
    head = FCOSHead(num_classes, c, scaled(256, width, 32))
    return FCOS(backbone, neck, head)


def cascade_mask_rcnn_swin_l(
    width: float = DEFAULT_WIDTH, num_classes: int = 80, window_size: int = 7,
    bbox_head: str = 'shared2fc', use_abs_pos_embed: bool = False,
) -> nn.Module:
    """Cascade Mask R-CNN, Swin-L FPN, 3 cascade bbox heads and 3 FCN mask heads."""
    backbone = _swin_l(width, window_size, 224, use_abs_pos_embed)
    c = scaled(256, width)
    neck = FPN(backbone.num_features, c, 5)
    heads: list[nn.Module] = []
    for _ in range(3):
        if bbox_head == 'shared2fc':
            heads.append(Shared2FCBBoxHead(
                in_channels=c, fc_out_channels=scaled(1024, width),
                num_classes=num_classes, reg_class_agnostic=True))
        elif bbox_head == '4conv1fc':
            heads.append(Shared4Conv1FCBBoxHead(
                in_channels=c, conv_out_channels=c, fc_out_channels=scaled(1024, width),
                num_classes=num_classes, reg_class_agnostic=False,
                norm_cfg=sync_bn_cfg()))
        else:
            raise ValueError(f"bbox_head must be 'shared2fc' or '4conv1fc', "
                             f'got {bbox_head!r}')
    mask_heads = [FCNMaskHead(4, c, c, num_classes) for _ in range(3)]
    return CascadeRCNN(backbone, neck, _rpn(c), CascadeRoIHead(heads, mask_heads, c))


def mask2former_swin_l(width: float = DEFAULT_WIDTH, num_things_classes: int = 80,
                       num_stuff_classes: int = 53, num_queries: int = 200) -> nn.Module:
    """Mask2Former Swin-L panoptic (``mask2former_swin-l-p4-w12-384-in21k``)."""
    backbone = _swin_l(width, 12, 384)
    feat = scaled(256, width, 32)
    head = Mask2FormerHead(
        backbone.num_features, feat, feat, num_things_classes, num_stuff_classes,
        num_queries, encoder_ffn_channels=scaled(1024, width),
        decoder_ffn_channels=scaled(2048, width))
    return Mask2Former(backbone, head)


def dino_swin_l(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                num_queries: int = 900) -> nn.Module:
    """DINO 5-scale Swin-L (``dino-5scale_swin-l_8xb2-12e_coco``)."""
    backbone = _swin_l(width, 12, 384)
    embed = scaled(256, width, 32)
    neck = ChannelMapper(backbone.num_features, embed, 1, norm_cfg=gn_cfg(32), act=None,
                         num_outs=5)
    return DINO(backbone, neck, embed, num_classes, num_queries,
                ffn_channels=scaled(2048, width))


def vitdet_h(width: float = DEFAULT_WIDTH, num_classes: int = 80,
             depth: int = 32) -> nn.Module:
    """ViTDet ViT-H Mask R-CNN: SimpleFPN, 2-conv RPN, 4conv1fc + mask heads, LN2d."""
    embed = 16 * scaled_head_dim(80, width)
    windowed = [i for i in range(depth) if (i + 1) % 8 != 0]
    backbone = ViT(img_size=1024, patch_size=16, embed_dim=embed, depth=depth,
                   num_heads=16, use_rel_pos=True, window_size=14,
                   window_block_indexes=windowed)
    c = scaled(256, width)
    ln2d = dict(type='LN2d', requires_grad=True)
    neck = SimpleFPN(embed, [embed // 4, embed // 2, embed, embed], c, 5, ln2d)
    bbox_head = Shared4Conv1FCBBoxHead(
        in_channels=c, conv_out_channels=c, fc_out_channels=scaled(1024, width),
        num_classes=num_classes, norm_cfg=ln2d)
    mask_head = FCNMaskHead(4, c, c, num_classes, norm_cfg=ln2d)
    return MaskRCNN(backbone, neck, _rpn(c, num_convs=2),
                    StandardRoIHead(bbox_head, mask_head, c))


def mobilenet_v2_ssdlite(width: float = DEFAULT_WIDTH,
                         num_classes: int = 80) -> nn.Module:
    """SSDLite MobileNetV2 (``ssdlite_mobilenetv2-scratch_8xb24-600e_coco``)."""
    norm_cfg = bn_cfg(eps=0.001, momentum=0.03)
    backbone = MobileNetV2(widen_factor=width, out_indices=(4, 7), norm_cfg=norm_cfg,
                           out_channel=scaled(1280, width, 8))
    in_channels = (backbone.stage_channels[4], backbone.out_channel)
    extra = tuple(scaled(c, width, 2) for c in (512, 256, 256, 128))
    out_channels = in_channels + extra
    neck = SSDNeck(in_channels, out_channels, (2, 2, 2, 2), (1, 1, 1, 1),
                   norm_cfg=norm_cfg)
    head = SSDHead(num_classes, out_channels, (6,) * 6, norm_cfg=norm_cfg)
    return SSD(backbone, neck, head)


def upernet_vit_b(width: float = DEFAULT_WIDTH, num_classes: int = 150) -> nn.Module:
    """mmseg UPerNet ViT-B/16 + MLN (``upernet_vit-b16_mln_512x512_80k_ade20k``)."""
    embed = 12 * scaled_head_dim(64, width)
    backbone = VisionTransformer(512, 16, embed, 12, 12, 4, (2, 5, 8, 11))
    neck = MultiLevelNeck([embed] * 4, embed, (4, 2, 1, 0.5))
    decode = UPerHead([embed] * 4, scaled(512, width), num_classes)
    aux = FCNHead(embed, scaled(256, width), num_classes, in_index=3)
    return EncoderDecoder(backbone, decode, neck, aux)


BIG_5K_STAGE_BLOCKS: tuple[int, int, int, int] = (3, 36, 503, 3)


def big_5k(width: float = DEFAULT_WIDTH, num_classes: int = 80,
           stage_blocks: Sequence[int] = BIG_5K_STAGE_BLOCKS) -> nn.Module:
    """Cascade Mask R-CNN on a 545-bottleneck SyncBN ResNet: 5,002 tensors."""
    backbone = ResNet(152, base_channels=scaled(64, width), frozen_stages=1,
                      norm_cfg=sync_bn_cfg(), stage_blocks=stage_blocks)
    c = scaled(256, width)
    neck = FPN(backbone.out_channels, c, 5)
    heads = [Shared2FCBBoxHead(in_channels=c, fc_out_channels=scaled(1024, width),
                               num_classes=num_classes, reg_class_agnostic=True)
             for _ in range(3)]
    masks = [FCNMaskHead(4, c, c, num_classes) for _ in range(3)]
    return CascadeRCNN(backbone, neck, _rpn(c), CascadeRoIHead(heads, masks, c))


def _giant_parts(width: float, num_classes: int) -> tuple[nn.Module, ...]:
    """The neck and heads of :func:`giant`: FPN over four 4-channel levels, RPN, RoI head."""
    c = scaled(256, width)
    bbox_head = Shared2FCBBoxHead(in_channels=c, fc_out_channels=scaled(1024, width),
                                  num_classes=num_classes)
    return FPN([4] * 4, c, 5), _rpn(c), StandardRoIHead(bbox_head, None, c)


def giant(num_tensors: int, width: float = DEFAULT_WIDTH, num_classes: int = 80) -> nn.Module:
    """Faster R-CNN FPN on a :func:`synthetic` backbone: exactly ``num_tensors`` tensors.

    The backbone holds nearly all of them, tiny (``backbone.stem``,
    ``backbone.stages.{i}.blocks.{j}`` with conv+BN, depthwise conv+GN or Linear+LN,
    ``backbone.head``); ``width`` scales the neck and heads only. Built for optimizer
    construction and steps: the backbone's features do not fit the neck's forward.
    """
    parts = _giant_parts(width, num_classes)
    rest = sum(count_tensors(m) for m in parts)
    if num_tensors < rest + 4:
        raise ValueError(f'a giant needs at least {rest + 4} tensors, got {num_tensors}')
    neck, rpn_head, roi_head = parts
    return FasterRCNN(synthetic(num_tensors - rest), neck, rpn_head, roi_head)


def giant_counts(num_tensors: int, width: float = DEFAULT_WIDTH,
                 num_classes: int = 80) -> tuple[int, int]:
    """(tensors, parameters) of ``giant(num_tensors, width)`` without building its backbone."""
    with torch.device('meta'):
        parts = _giant_parts(width, num_classes)
    rest = sum(count_tensors(m) for m in parts)
    return num_tensors, synthetic_numel(num_tensors - rest) + sum(count_numel(m) for m in parts)


def giant_100k(width: float = DEFAULT_WIDTH, num_classes: int = 80) -> nn.Module:
    """:func:`giant` with 100,000 tensors."""
    return giant(100_000, width, num_classes)


def giant_1m(width: float = DEFAULT_WIDTH, num_classes: int = 80) -> nn.Module:
    """:func:`giant` with 1,000,000 tensors."""
    return giant(1_000_000, width, num_classes)


_SGD_002 = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)


def _giant_paramwise_cfg() -> dict:
    """The giants' ``paramwise_cfg``, pieced from real configs: FCOS's bias rules, no decay on
    norms and depthwise convs, Swin's ``'norm'`` key (it wins over the bias rule on LayerNorm
    biases) and the stem at a tenth of the lr."""
    return dict(norm_decay_mult=0.0, bias_lr_mult=2.0, bias_decay_mult=0.0, dwconv_decay_mult=0.0,
                custom_keys={'norm': dict(decay_mult=0.0), 'backbone.stem': dict(lr_mult=0.1)})


_SWIN_ADAMW = dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05)
_SWIN_L_DEPTHS = (2, 2, 18, 2)


def _swin_paramwise_cfg() -> dict:
    """mmdet Swin detection configs' ``paramwise_cfg``."""
    return dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.0),
        'relative_position_bias_table': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
    })


def _mask2former_swin_paramwise_cfg(depths: Sequence[int] = _SWIN_L_DEPTHS) -> dict:
    """mmdet Mask2Former Swin configs' ``paramwise_cfg`` (per-block norm keys)."""
    backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
    backbone_embed_multi = dict(lr_mult=0.1, decay_mult=0.0)
    embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
    custom_keys: dict[str, dict] = {
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        'backbone.patch_embed.norm': dict(backbone_norm_multi),
        'backbone.norm': dict(backbone_norm_multi),
        'absolute_pos_embed': dict(backbone_embed_multi),
        'relative_position_bias_table': dict(backbone_embed_multi),
        'query_embed': dict(embed_multi),
        'query_feat': dict(embed_multi),
        'level_embed': dict(embed_multi),
    }
    custom_keys.update({
        f'backbone.stages.{stage_id}.blocks.{block_id}.norm': dict(backbone_norm_multi)
        for stage_id, num_blocks in enumerate(depths)
        for block_id in range(num_blocks)
    })
    custom_keys.update({
        f'backbone.stages.{stage_id}.downsample.norm': dict(backbone_norm_multi)
        for stage_id in range(len(depths) - 1)
    })
    return dict(custom_keys=custom_keys, norm_decay_mult=0.0)


def _vitdet_paramwise_cfg(num_layers: int = 32, decay_rate: float = 0.9) -> dict:
    """detectron2 ViTDet-H layer-wise lr decay + no-decay norms/pos_embed as custom keys."""
    embed_lr = decay_rate ** (num_layers + 1)
    custom_keys: dict[str, dict] = {
        'backbone.patch_embed': dict(lr_mult=embed_lr),
        'backbone.pos_embed': dict(lr_mult=embed_lr, decay_mult=0.0),
    }
    for i in range(num_layers):
        lr_mult = decay_rate ** (num_layers - i)
        custom_keys[f'backbone.blocks.{i}.'] = dict(lr_mult=lr_mult)
        custom_keys[f'backbone.blocks.{i}.norm'] = dict(lr_mult=lr_mult, decay_mult=0.0)
    return dict(custom_keys=custom_keys, norm_decay_mult=0.0)


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: builder plus the optimizer and paramwise_cfg of its real config."""

    name: str
    builder: Callable[..., nn.Module]
    paramwise_cfg: dict | None
    optimizer: dict
    description: str
    #: (tensors, parameters) at a width without building the model, for entries too big to
    #: build just to count them; None: counted by building on the meta device
    counts: Callable[[float], tuple[int, int]] | None = None


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            'faster_rcnn_r50_fpn', faster_rcnn_r50_fpn,
            dict(norm_decay_mult=0.0, bias_decay_mult=0.0), dict(_SGD_002),
            'Faster R-CNN R-50-FPN, 189 tensors; BN, frozen stem+layer1 '
            '(requires_grad=False). Real config has no paramwise_cfg; this one '
            'exercises the norm/bias rules.'),
        ZooModel(
            'mask_rcnn_r101_fpn', mask_rcnn_r101_fpn, None, dict(_SGD_002),
            'Mask R-CNN R-101-FPN, 354 tensors; frozen stem+layer1. paramwise_cfg '
            'is None as in the real config (one-group path).'),
        ZooModel(
            'retinanet_r50_fpn', retinanet_r50_fpn,
            dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
            dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
            'RetinaNet R-50-FPN (extra convs on input), 195 tensors. Real config '
            'has no paramwise_cfg; this one exercises the norm/bias rules.'),
        ZooModel(
            'fcos_r50_caffe_fpn_gn', fcos_r50_caffe_fpn_gn,
            dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
            dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
            'FCOS R-50-caffe FPN GN head, 210 tensors: all backbone BN frozen '
            '(requires_grad=False), GroupNorm towers, five 0-d Scale.scale params; '
            'real paramwise_cfg.'),
        ZooModel(
            'cascade_mask_rcnn_swin_l', cascade_mask_rcnn_swin_l,
            _swin_paramwise_cfg(), dict(_SWIN_ADAMW),
            'Cascade Mask R-CNN Swin-L (depths 2-2-18-2, window 7) FPN, 3 cascade '
            'Shared2FC bbox heads + 3 FCN mask heads: 415 tensors '
            "(bbox_head='4conv1fc' gives the Swin-repo SyncBN 4conv1fc heads: 445)."),
        ZooModel(
            'mask2former_swin_l', mask2former_swin_l,
            _mask2former_swin_paramwise_cfg(),
            dict(type='AdamW', lr=0.0001, weight_decay=0.05, eps=1e-8,
                 betas=(0.9, 0.999)),
            'Mask2Former Swin-L panoptic (window 12, 200 queries), 625 tensors; '
            'MSDeformAttn pixel decoder, GN convs, Embedding queries; the real '
            'per-block-norm custom_keys.'),
        ZooModel(
            'vitdet_h', vitdet_h, _vitdet_paramwise_cfg(),
            dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.1),
            'ViTDet ViT-H (32 blocks, rel_pos_h/w per block, 4 global blocks) Mask '
            'R-CNN with SimpleFPN and LN2d norms (ConvModule attr "norm_layer"), 525 '
            'tensors. mmdet uses LayerDecayOptimizerConstructor(decay_rate=0.7, '
            'num_layers=12 for ViT-B); this paramwise_cfg expresses detectron2 '
            "ViT-H's layer decay 0.9 as custom_keys."),
        ZooModel(
            'dino_swin_l', dino_swin_l,
            dict(custom_keys={'backbone': dict(lr_mult=0.1)}),
            dict(type='AdamW', lr=0.0001, weight_decay=0.0001),
            'DINO 5-scale Swin-L, 900 queries, 645 tensors: ChannelMapper GN neck, '
            'deformable encoder/decoder, raw level_embed, 7 cls/reg branches.'),
        ZooModel(
            'mobilenet_v2_ssdlite', mobilenet_v2_ssdlite,
            dict(norm_decay_mult=0.0, dwconv_decay_mult=0.0),
            dict(type='SGD', lr=0.015, momentum=0.9, weight_decay=4.0e-5),
            'SSDLite MobileNetV2, 252 tensors: depthwise Conv2d (groups == '
            'in_channels) + BN everywhere. Real config has no paramwise_cfg; this '
            'one exercises the dwconv/norm rules.'),
        ZooModel(
            'upernet_vit_b', upernet_vit_b,
            dict(custom_keys={'pos_embed': dict(decay_mult=0.0),
                              'cls_token': dict(decay_mult=0.0),
                              'norm': dict(decay_mult=0.0)}),
            dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
            'mmseg UPerNet ViT-B/16 + MultiLevelNeck, 207 tensors: cls_token, '
            'pos_embed, nn.MultiheadAttention in_proj_*, SyncBN decode heads; LN '
            "layers are named ln1/ln2, so the real 'norm' key never matches them."),
        ZooModel(
            'big_5k', big_5k,
            dict(norm_decay_mult=0.0, bias_lr_mult=2.0, bias_decay_mult=0.0,
                 custom_keys={'backbone': dict(lr_mult=0.1)}),
            dict(_SGD_002),
            'Cascade Mask R-CNN on a ResNet with stage_blocks (3, 36, 503, 3) and '
            'SyncBN: 5,002 tensors.'),
        *(ZooModel(
            name, builder, _giant_paramwise_cfg(), dict(_SGD_002),
            f'Faster R-CNN FPN on a synthetic backbone of tiny tensors (stages of conv+BN, '
            f'depthwise conv+GN, Linear+LN blocks): {size:,} tensors; width scales the neck '
            'and heads only; norm, bias and depthwise rules plus two custom keys.',
            partial(giant_counts, size))
          for name, builder, size in (('giant_100k', giant_100k, 100_000),
                                      ('giant_1m', giant_1m, 1_000_000))),
    )
}


def counts(name: str, width: float = DEFAULT_WIDTH) -> tuple[int, int]:
    """(tensors, parameters) of ``MODELS[name]`` at ``width``: the entry's known counts, or
    counted on the meta device."""
    entry = MODELS.get(name)
    if entry is not None and entry.counts is not None:
        return entry.counts(width)
    with torch.device('meta'):
        model = build(name, width=width)
    return count_tensors(model), count_numel(model)


def build(name: str, width: float = DEFAULT_WIDTH, **kwargs: Any) -> nn.Module:
    """Build ``MODELS[name]`` at channel multiplier ``width``."""
    try:
        entry = MODELS[name]
    except KeyError:
        raise KeyError(f'unknown zoo model {name!r}; known: {sorted(MODELS)}') from None
    return entry.builder(width=width, **kwargs)


def count_tensors(model: nn.Module) -> int:
    """Number of distinct parameter tensors of ``model``."""
    return sum(1 for _ in model.parameters())


def count_numel(model: nn.Module) -> int:
    """Total number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())
