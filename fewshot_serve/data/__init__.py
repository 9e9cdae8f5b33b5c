"""Datasets, their class splits, and the N-way K-shot episodes meta-training and evaluation draw from them."""
