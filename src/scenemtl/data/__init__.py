"""Datasets: on-disk format, reader, DataModule, augmentation, tools, generator."""
