"""scenemtl: multi-task semantic segmentation and metric depth for street scenes."""

__version__ = "0.1.0"
