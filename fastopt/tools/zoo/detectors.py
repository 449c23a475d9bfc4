"""Detectors and segmentors: the module trees that hold backbone, neck and heads."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .bricks import DeformableDetrTransformerEncoder, DinoTransformerDecoder, Feats, SinePositionalEncoding
from .heads import CdnQueryGenerator, DINOHead, MaskFormerFusionHead


class TwoStageDetector(nn.Module):
    """mmdet ``TwoStageDetector``: ``backbone``, ``neck``, ``rpn_head``, ``roi_head``."""

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, rpn_head: nn.Module,
        roi_head: nn.Module,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    def extract_feat(self, img: Tensor) -> Feats:
        """Backbone + neck features."""
        return self.neck(self.backbone(img))

    def forward(self, img: Tensor) -> tuple[Feats, Any]:
        """Neck features and RPN outputs (RoI heads need RoIAlign; not run)."""
        feats = self.extract_feat(img)
        return feats, self.rpn_head(feats)


class FasterRCNN(TwoStageDetector):
    """mmdet ``FasterRCNN``."""


class MaskRCNN(TwoStageDetector):
    """mmdet ``MaskRCNN``."""


class CascadeRCNN(TwoStageDetector):
    """mmdet ``CascadeRCNN`` (Cascade Mask R-CNN when the RoI head has masks)."""


class SingleStageDetector(nn.Module):
    """mmdet ``SingleStageDetector``: ``backbone``, ``neck``, ``bbox_head``."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head

    def extract_feat(self, img: Tensor) -> Feats:
        """Backbone + neck features."""
        return self.neck(self.backbone(img))

    def forward(self, img: Tensor) -> Any:
        """Raw dense-head outputs."""
        return self.bbox_head(self.extract_feat(img))


class RetinaNet(SingleStageDetector):
    """mmdet ``RetinaNet``."""


class FCOS(SingleStageDetector):
    """mmdet ``FCOS``."""


class SSD(SingleStageDetector):
    """mmdet SSD (a ``SingleStageDetector`` in the real configs)."""


class Mask2Former(nn.Module):
    """mmdet ``Mask2Former``: ``backbone``, ``panoptic_head``, ``panoptic_fusion_head``."""

    def __init__(self, backbone: nn.Module, panoptic_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.panoptic_head = panoptic_head
        self.panoptic_fusion_head = MaskFormerFusionHead()

    def forward(self, img: Tensor) -> Feats:
        """Backbone features only (the transformer head has no forward here)."""
        return self.backbone(img)


class DINO(nn.Module):
    """mmdet ``DINO``: backbone, neck, bbox_head, encoder, decoder, raw ``level_embed``."""

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        embed_dims: int,
        num_classes: int = 80,
        num_queries: int = 900,
        num_feature_levels: int = 5,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_channels: int = 2048,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = DINOHead(num_classes, embed_dims, num_decoder_layers + 1)
        self.num_queries = num_queries
        self.positional_encoding = SinePositionalEncoding(embed_dims // 2)
        self.encoder = DeformableDetrTransformerEncoder(
            num_encoder_layers, embed_dims=embed_dims, num_heads=num_heads,
            num_levels=num_feature_levels, num_points=num_points,
            feedforward_channels=ffn_channels)
        self.decoder = DinoTransformerDecoder(
            num_decoder_layers, embed_dims, num_heads, ffn_channels,
            num_feature_levels)
        self.embed_dims = embed_dims
        self.query_embedding = nn.Embedding(num_queries, embed_dims)
        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, embed_dims))
        nn.init.normal_(self.level_embed)
        self.memory_trans_fc = nn.Linear(embed_dims, embed_dims)
        self.memory_trans_norm = nn.LayerNorm(embed_dims)
        self.dn_query_generator = CdnQueryGenerator(num_classes, embed_dims)

    def forward(self, img: Tensor) -> Feats:
        """Backbone + neck features only (the transformer has no forward here)."""
        return self.neck(self.backbone(img))


class EncoderDecoder(nn.Module):
    """mmseg ``EncoderDecoder``: backbone, neck, decode_head, auxiliary_head."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module,
                 neck: nn.Module | None = None,
                 auxiliary_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head

    def forward(self, img: Tensor) -> Tensor:
        """Decode-head logits (auxiliary head not run)."""
        feats = self.backbone(img)
        if hasattr(self, 'neck'):
            feats = self.neck(feats)
        return self.decode_head(feats)
