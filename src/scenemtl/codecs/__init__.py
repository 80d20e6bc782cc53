"""Codecs of the files that hold ground truth and predictions (numpy and Pillow only).

The bottom of the package: task kinds (:mod:`scenemtl.tasks`) read and write their files
with these, and so do the dataset layouts (:mod:`scenemtl.data`); nothing here knows a
dataset layout, a task or torch, so that the generator and ``data check`` stay light and
neither tasks nor data import the other to decode a PNG.

* :mod:`~scenemtl.codecs.image`: opening an image with its size checked first.
* :mod:`~scenemtl.codecs.classes`: class tables (the Cityscapes default) and label PNGs.
* :mod:`~scenemtl.codecs.depth`: the depth PNG encodings (``disparity8``, ``meters16``).
* :mod:`~scenemtl.codecs.normals`: the surface-normal RGB PNG encoding (``rgb8``).
"""
