"""Architectures: a registry of backbones with a replaceable linear head."""

from mediflow.models.registry import ARCHITECTURES, ArchSpec, MediFlowNet, build_model

__all__ = ["ARCHITECTURES", "ArchSpec", "MediFlowNet", "build_model"]
