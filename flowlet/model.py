"""Public home of the generator network and its checkpoint loader (see flowlet.generative)."""

from flowlet.generative.checkpoint import load_checkpoint
from flowlet.generative.unet import FlowUNet, UNetConfig

__all__ = ["load_checkpoint", "FlowUNet", "UNetConfig"]
