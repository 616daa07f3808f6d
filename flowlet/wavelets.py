"""Public home of the 3D Haar wavelet transform and the model-grid pad/crop (see flowlet.generative.wavelets)."""

from flowlet.generative.wavelets import center_crop, dwt3d, idwt3d, pad_to_size

__all__ = ["dwt3d", "idwt3d", "pad_to_size", "center_crop"]
