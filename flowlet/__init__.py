"""FlowLet: age-conditioned wavelet flow matching for 3D brain MRI, and the augmentation study around it."""

__version__ = "0.1.0"
