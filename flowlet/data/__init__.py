"""Inputs: BIDS datasets, participant tables, NIfTI I/O, the MNI152 template and the train/test split."""
