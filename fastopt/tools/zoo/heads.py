"""Heads: dense (RPN, Retina, FCOS, SSD), RoI (bbox, mask, cascade), Mask2Former and DINO
heads, mmseg decode heads (UPerHead, FCNHead)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bricks import (
    ConvModule,
    Feats,
    Mask2FormerTransformerDecoder,
    Mask2FormerTransformerEncoder,
    NormCfg,
    Scale,
    SinePositionalEncoding,
    gn_cfg,
    sync_bn_cfg,
)


class RPNHead(nn.Module):
    """mmdet ``RPNHead``: ``rpn_conv`` (Conv2d, or Sequential of ConvModule), cls, reg."""

    def __init__(
        self,
        in_channels: int,
        feat_channels: int,
        num_base_priors: int = 3,
        num_convs: int = 1,
    ) -> None:
        super().__init__()
        self.num_convs = num_convs
        if num_convs > 1:
            self.rpn_conv: nn.Module = nn.Sequential(*(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels,
                           3, padding=1, inplace=False)
                for i in range(num_convs)
            ))
        else:
            self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_base_priors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_base_priors * 4, 1)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level objectness and box deltas."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            x = self.rpn_conv(x)
            if self.num_convs == 1:
                x = F.relu(x)
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds


class RetinaHead(nn.Module):
    """mmdet ``RetinaHead``: ``cls_convs``/``reg_convs`` towers, ``retina_cls/reg``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 4,
        num_base_priors: int = 9,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
            self.reg_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        self.retina_cls = nn.Conv2d(
            feat_channels, num_base_priors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_base_priors * 4, 3, padding=1)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level class scores and box deltas."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.retina_cls(cls_feat))
            bbox_preds.append(self.retina_reg(reg_feat))
        return cls_scores, bbox_preds


class FCOSHead(nn.Module):
    """mmdet ``FCOSHead``: GN towers, conv_cls/reg/centerness, 0-d ``scales.{i}.scale``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else gn_cfg()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.reg_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per-level class scores, scaled box distances and centerness."""
        cls_scores, bbox_preds, centernesses = [], [], []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.conv_cls(cls_feat))
            bbox_preds.append(F.relu(scale(self.conv_reg(reg_feat))))
            centernesses.append(self.conv_centerness(reg_feat))
        return cls_scores, bbox_preds, centernesses


class SingleRoIExtractor(nn.Module):
    """mmdet ``SingleRoIExtractor`` placeholder (RoIAlign layers hold no params)."""

    def __init__(self, out_channels: int, featmap_strides: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.featmap_strides = tuple(featmap_strides)
        self.roi_layers = nn.ModuleList(nn.Identity() for _ in featmap_strides)


class ConvFCBBoxHead(nn.Module):
    """mmdet ``ConvFCBBoxHead``: shared/cls/reg conv+fc branches, ``fc_cls``, ``fc_reg``."""

    def __init__(
        self,
        num_shared_convs: int = 0,
        num_shared_fcs: int = 0,
        num_cls_convs: int = 0,
        num_cls_fcs: int = 0,
        num_reg_convs: int = 0,
        num_reg_fcs: int = 0,
        in_channels: int = 256,
        conv_out_channels: int = 256,
        fc_out_channels: int = 1024,
        roi_feat_size: int = 7,
        num_classes: int = 80,
        reg_class_agnostic: bool = False,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_out_channels = conv_out_channels
        self.fc_out_channels = fc_out_channels
        self.roi_feat_area = roi_feat_size * roi_feat_size
        self.norm_cfg = norm_cfg
        self.num_shared_fcs = num_shared_fcs
        # BBoxHead.__init__ registers fc_cls/fc_reg first and ConvFCBBoxHead
        # replaces them later, so they keep the first slots of named_parameters().
        self.add_module('fc_cls', None)
        self.add_module('fc_reg', None)
        self.shared_convs, self.shared_fcs, last_dim = self._add_conv_fc_branch(
            num_shared_convs, num_shared_fcs, in_channels, True)
        self.shared_out_channels = last_dim
        self.cls_convs, self.cls_fcs, cls_dim = self._add_conv_fc_branch(
            num_cls_convs, num_cls_fcs, last_dim)
        self.reg_convs, self.reg_fcs, reg_dim = self._add_conv_fc_branch(
            num_reg_convs, num_reg_fcs, last_dim)
        if num_shared_fcs == 0:
            if num_cls_fcs == 0:
                cls_dim *= self.roi_feat_area
            if num_reg_fcs == 0:
                reg_dim *= self.roi_feat_area
        self.relu = nn.ReLU(inplace=True)
        self.fc_cls = nn.Linear(cls_dim, num_classes + 1)
        out_dim_reg = 4 if reg_class_agnostic else 4 * num_classes
        self.fc_reg = nn.Linear(reg_dim, out_dim_reg)

    def _add_conv_fc_branch(
        self, num_convs: int, num_fcs: int, in_channels: int, is_shared: bool = False
    ) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        """Build one conv+fc branch, as mmdet does."""
        last_dim = in_channels
        convs = nn.ModuleList()
        for i in range(num_convs):
            chn = last_dim if i == 0 else self.conv_out_channels
            convs.append(ConvModule(chn, self.conv_out_channels, 3, padding=1,
                                    norm_cfg=self.norm_cfg))
        if num_convs > 0:
            last_dim = self.conv_out_channels
        fcs = nn.ModuleList()
        if num_fcs > 0:
            if is_shared or self.num_shared_fcs == 0:
                last_dim *= self.roi_feat_area
            for i in range(num_fcs):
                fc_in = last_dim if i == 0 else self.fc_out_channels
                fcs.append(nn.Linear(fc_in, self.fc_out_channels))
            last_dim = self.fc_out_channels
        return convs, fcs, last_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores and box deltas from pooled RoI features (N, C, 7, 7)."""
        for conv in self.shared_convs:
            x = conv(x)
        if len(self.shared_fcs) > 0:
            x = x.flatten(1)
            for fc in self.shared_fcs:
                x = self.relu(fc(x))
        x_cls, x_reg = x, x
        for conv in self.cls_convs:
            x_cls = conv(x_cls)
        if x_cls.dim() > 2:
            x_cls = x_cls.flatten(1)
        for fc in self.cls_fcs:
            x_cls = self.relu(fc(x_cls))
        for conv in self.reg_convs:
            x_reg = conv(x_reg)
        if x_reg.dim() > 2:
            x_reg = x_reg.flatten(1)
        for fc in self.reg_fcs:
            x_reg = self.relu(fc(x_reg))
        return self.fc_cls(x_cls), self.fc_reg(x_reg)


class Shared2FCBBoxHead(ConvFCBBoxHead):
    """mmdet ``Shared2FCBBoxHead``: ``shared_fcs.0/1``, ``fc_cls``, ``fc_reg``."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_fcs=2, fc_out_channels=fc_out_channels, **kwargs)


class Shared4Conv1FCBBoxHead(ConvFCBBoxHead):
    """mmdet ``Shared4Conv1FCBBoxHead``: 4 normed ``shared_convs`` + ``shared_fcs.0``."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_convs=4, num_shared_fcs=1,
                         fc_out_channels=fc_out_channels, **kwargs)


class FCNMaskHead(nn.Module):
    """mmdet ``FCNMaskHead``: ``convs.{i}``, ``upsample`` (deconv), ``conv_logits``."""

    def __init__(
        self,
        num_convs: int = 4,
        in_channels: int = 256,
        conv_out_channels: int = 256,
        num_classes: int = 80,
        class_agnostic: bool = False,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels,
                       conv_out_channels, 3, padding=1, norm_cfg=norm_cfg)
            for i in range(num_convs)
        )
        upsample_in = conv_out_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(
            upsample_in, conv_out_channels, kernel_size=2, stride=2)
        out_channels = 1 if class_agnostic else num_classes
        self.conv_logits = nn.Conv2d(conv_out_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits from pooled RoI features (N, C, 14, 14)."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(self.relu(self.upsample(x)))


class StandardRoIHead(nn.Module):
    """mmdet ``StandardRoIHead``: ``bbox_head`` and optional ``mask_head``."""

    def __init__(
        self,
        bbox_head: nn.Module,
        mask_head: nn.Module | None = None,
        out_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor(out_channels, featmap_strides)
        self.bbox_head = bbox_head
        if mask_head is not None:
            self.mask_roi_extractor = SingleRoIExtractor(out_channels, featmap_strides)
            self.mask_head = mask_head


class CascadeRoIHead(nn.Module):
    """mmdet ``CascadeRoIHead``: ``bbox_head.{stage}`` and ``mask_head.{stage}``."""

    def __init__(
        self,
        bbox_heads: Sequence[nn.Module],
        mask_heads: Sequence[nn.Module] | None = None,
        out_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        self.num_stages = len(bbox_heads)
        self.bbox_roi_extractor = nn.ModuleList(
            SingleRoIExtractor(out_channels, featmap_strides) for _ in bbox_heads)
        self.bbox_head = nn.ModuleList(bbox_heads)
        if mask_heads is not None:
            self.mask_roi_extractor = nn.ModuleList(
                SingleRoIExtractor(out_channels, featmap_strides) for _ in mask_heads)
            self.mask_head = nn.ModuleList(mask_heads)


class SSDHead(nn.Module):
    """mmdet ``SSDHead`` (SSDLite): ``cls_convs.{i}``/``reg_convs.{i}`` = dw ConvModule + 1x1."""

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        num_base_priors: Sequence[int],
        use_depthwise: bool = True,
        norm_cfg: NormCfg | None = None,
        act: str = 'ReLU6',
    ) -> None:
        super().__init__()
        cls_out = num_classes + 1
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for channel, priors in zip(in_channels, num_base_priors):
            cls_layers: list[nn.Module] = []
            reg_layers: list[nn.Module] = []
            if use_depthwise:
                cls_layers.append(ConvModule(channel, channel, 3, padding=1,
                                             groups=channel, norm_cfg=norm_cfg, act=act))
                reg_layers.append(ConvModule(channel, channel, 3, padding=1,
                                             groups=channel, norm_cfg=norm_cfg, act=act))
            k, p = (1, 0) if use_depthwise else (3, 1)
            cls_layers.append(nn.Conv2d(channel, priors * cls_out, k, padding=p))
            reg_layers.append(nn.Conv2d(channel, priors * 4, k, padding=p))
            self.cls_convs.append(nn.Sequential(*cls_layers))
            self.reg_convs.append(nn.Sequential(*reg_layers))

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level class scores and box deltas."""
        cls_scores = [conv(x) for x, conv in zip(feats, self.cls_convs)]
        bbox_preds = [conv(x) for x, conv in zip(feats, self.reg_convs)]
        return cls_scores, bbox_preds


class MSDeformAttnPixelDecoder(nn.Module):
    """mmdet ``MSDeformAttnPixelDecoder`` (Mask2Former pixel decoder)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_channels: int,
        out_channels: int,
        num_encoder_levels: int = 3,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        feedforward_channels: int = 1024,
    ) -> None:
        super().__init__()
        norm_cfg = gn_cfg(32)
        num_inputs = len(in_channels)
        self.num_input_levels = num_inputs
        self.num_encoder_levels = num_encoder_levels
        self.input_convs = nn.ModuleList(
            ConvModule(in_channels[i], feat_channels, 1, norm_cfg=norm_cfg,
                       act=None, bias=True)
            for i in range(num_inputs - 1, num_inputs - num_encoder_levels - 1, -1))
        self.encoder = Mask2FormerTransformerEncoder(
            num_layers, embed_dims=feat_channels, num_heads=num_heads,
            num_levels=num_encoder_levels, num_points=num_points,
            feedforward_channels=feedforward_channels)
        self.postional_encoding = SinePositionalEncoding(feat_channels // 2)
        self.level_encoding = nn.Embedding(num_encoder_levels, feat_channels)
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in range(num_inputs - num_encoder_levels - 1, -1, -1):
            self.lateral_convs.append(ConvModule(
                in_channels[i], feat_channels, 1, bias=False, norm_cfg=norm_cfg,
                act=None))
            self.output_convs.append(ConvModule(
                feat_channels, feat_channels, 3, padding=1, bias=False,
                norm_cfg=norm_cfg))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, 1)


class Mask2FormerHead(nn.Module):
    """mmdet ``Mask2FormerHead``: pixel decoder, transformer decoder, query embeds."""

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_channels: int,
        out_channels: int,
        num_things_classes: int = 80,
        num_stuff_classes: int = 53,
        num_queries: int = 100,
        num_transformer_feat_level: int = 3,
        num_decoder_layers: int = 9,
        encoder_ffn_channels: int = 1024,
        decoder_ffn_channels: int = 2048,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        self.num_classes = num_things_classes + num_stuff_classes
        self.num_queries = num_queries
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels, feat_channels, out_channels,
            num_encoder_levels=num_transformer_feat_level, num_heads=num_heads,
            feedforward_channels=encoder_ffn_channels)
        self.transformer_decoder = Mask2FormerTransformerDecoder(
            num_decoder_layers, feat_channels, num_heads, decoder_ffn_channels)
        self.decoder_embed_dims = feat_channels
        self.decoder_input_projs = nn.ModuleList(
            nn.Identity() for _ in range(num_transformer_feat_level))
        self.decoder_positional_encoding = SinePositionalEncoding(feat_channels // 2)
        self.query_embed = nn.Embedding(num_queries, feat_channels)
        self.query_feat = nn.Embedding(num_queries, feat_channels)
        self.level_embed = nn.Embedding(num_transformer_feat_level, feat_channels)
        self.cls_embed = nn.Linear(feat_channels, self.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, out_channels))


class MaskFormerFusionHead(nn.Module):
    """mmdet ``MaskFormerFusionHead`` (no parameters)."""


class DINOHead(nn.Module):
    """mmdet ``DINOHead``: ``cls_branches.{i}`` and ``reg_branches.{i}.{0,2,4}``."""

    def __init__(self, num_classes: int, embed_dims: int, num_pred_layer: int,
                 num_reg_fcs: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_branches = nn.ModuleList(
            nn.Linear(embed_dims, num_classes) for _ in range(num_pred_layer))
        branches = []
        for _ in range(num_pred_layer):
            layers: list[nn.Module] = []
            for _ in range(num_reg_fcs):
                layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
            layers.append(nn.Linear(embed_dims, 4))
            branches.append(nn.Sequential(*layers))
        self.reg_branches = nn.ModuleList(branches)


class CdnQueryGenerator(nn.Module):
    """mmdet ``CdnQueryGenerator``: ``label_embedding`` (denoising queries)."""

    def __init__(self, num_classes: int, embed_dims: int) -> None:
        super().__init__()
        self.num_classes, self.embed_dims = num_classes, embed_dims
        self.label_embedding = nn.Embedding(num_classes, embed_dims)


class PPM(nn.ModuleList):
    """mmseg ``PPM``: ``{i}.1`` = ConvModule after adaptive pooling."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int,
                 norm_cfg: NormCfg) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s),
                          ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg))
            for s in pool_scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Pool, project and upsample back."""
        return [F.interpolate(m(x), size=x.shape[2:], mode='bilinear') for m in self]


class UPerHead(nn.Module):
    """mmseg ``UPerHead``: ``conv_seg``, ``psp_modules``, ``bottleneck``, FPN convs."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else sync_bn_cfg()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, norm_cfg)
        self.bottleneck = ConvModule(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1,
            norm_cfg=norm_cfg)
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, channels, 1, norm_cfg=norm_cfg, inplace=False)
            for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1, norm_cfg=norm_cfg,
                       inplace=False)
            for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(
            len(in_channels) * channels, channels, 3, padding=1, norm_cfg=norm_cfg)

    def forward(self, inputs: Feats) -> Tensor:
        """UPerNet fusion and per-pixel logits."""
        x = inputs[-1]
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode='bilinear')
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [
            F.interpolate(o, size=outs[0].shape[2:], mode='bilinear') for o in outs[1:]]
        feats = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(feats))


class FCNHead(nn.Module):
    """mmseg ``FCNHead``: ``conv_seg`` and ``convs.{i}``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 num_convs: int = 1, norm_cfg: NormCfg | None = None,
                 in_index: int = -1) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else sync_bn_cfg()
        self.in_index = in_index
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(*(
            ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1,
                       norm_cfg=norm_cfg)
            for i in range(num_convs)))

    def forward(self, inputs: Feats) -> Tensor:
        """Per-pixel logits from ``inputs[in_index]``."""
        return self.conv_seg(self.dropout(self.convs(inputs[self.in_index])))
