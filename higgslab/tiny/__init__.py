"""Tiny random checkpoints written in the exact real on-disk layouts: for tests, notebooks and offline demos."""
