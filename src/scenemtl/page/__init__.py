"""The page of ``scenemtl serve``: a trained model tried on images in a browser.

:mod:`~scenemtl.page.keys` builds the class legend and the depth scale, and
:mod:`~scenemtl.page.predict` the panel of one upload, neither with Gradio;
:mod:`~scenemtl.page.app` lays them out as a Gradio page (the ``serve`` extra).
"""
