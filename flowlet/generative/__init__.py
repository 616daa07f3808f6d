"""The wavelet flow-matching generator.

- ``wavelets``: orthonormal 3D Haar transform (``dwt3d``/``idwt3d``), ``pad_to_size``/``center_crop``.
- ``unet``: ``UNetConfig`` (reference config.json format) and ``FlowUNet``; presets in ``presets/``.
- ``checkpoint``: ``load_checkpoint``/``save_checkpoint`` (weights_only loading, atomic saving).
- ``conditions``: ``condition_ranges.json`` and normalisation of ages (and other conditions) to [0, 1].
- ``flows``: probability paths (rectified, cfm, trigonometric, vp_diffusion) and time samplers.
- ``loss``: the LLL/detail-weighted flow-matching loss.
- ``solvers``: Euler/Heun/midpoint integration and classifier-free guidance.
- ``requests``: sample requests, solver names and the manifest writer, without torch.
"""
