"""Synthetic whole-head T1w phantoms of an ageing cohort, built from the MNI152 template (the demo dataset)."""
