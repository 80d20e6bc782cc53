"""Comparing what two float computation paths produced.

Two paths that compute the same network in float32 (a batch against one image, Trainer.predict
against ``predict_step``, torch against onnxruntime, this CPU's kernels against another's) agree
up to rounding, not bit for bit: the reduction order of a convolution changes with the batch
size, the kernel family (``ATEN_CPU_CAPABILITY``) and the library. So a test never compares
such results with ``array_equal``; it compares them within a bound it can state:

* **Logits / meters.** Float32 accumulation over the layers of the tiny test networks moves
  an output by a relative ~1e-7..1e-6 of its largest value between paths (measured on the
  tiny joint network: 2.4e-7 between batch 1 and batch 3, 2.5e-7 between the avx512 and the
  default kernels). ``LOGIT_MARGIN`` is 1e-4, 400x that, relative to the logits' scale.
* **Labels** (argmax of logits) may therefore differ only at a pixel whose two best logits
  are closer than that margin in the reference path: a near tie.
* **Quantized codes** (depth PNGs: 1/256 m or 1/254 of a disparity range per step) may
  differ by at most one step: a relative change of 1e-6 is far below one step (1/256 m at
  100 m is 4e-5 relative), so it can cross at most one rounding boundary.

Tests that compare two float paths carry the ``float_paths`` marker: ``make test-kernels``
runs them again with PyTorch's portable kernels (``ATEN_CPU_CAPABILITY=default``), which
round differently from the vectorized ones, so that a test that only holds with one
machine's rounding cannot land.
"""

from __future__ import annotations

import numpy as np
import torch

LOGIT_MARGIN = 1e-4
"""Relative margin (of the largest |logit|) below which two classes count as tied."""


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_labels_agree(
    got: torch.Tensor | np.ndarray,
    reference_logits: torch.Tensor | np.ndarray,
    margin: float = LOGIT_MARGIN,
) -> None:
    """Labels ``got`` [H, W] equal the argmax of ``reference_logits`` [C, H, W] at every
    pixel whose two best reference logits differ by more than ``margin`` times the largest
    |logit| (near ties may go either way)."""
    got, logits = _numpy(got).astype(np.int64), _numpy(reference_logits).astype(np.float64)
    assert logits.ndim == 3 and got.shape == logits.shape[1:], (got.shape, logits.shape)
    top2 = np.sort(logits, axis=0)[-2:]
    tie = (top2[1] - top2[0]) <= margin * max(float(np.abs(logits).max()), 1e-12)
    want = logits.argmax(0)
    wrong = (got != want) & ~tie
    assert not wrong.any(), f"{int(wrong.sum())} label(s) differ away from a near tie"
    # a label that differs must at least be one of the tied pair
    differs = got != want
    if differs.any():
        order = np.argsort(logits, axis=0)
        second = order[-2]
        assert np.all(got[differs] == second[differs]), "a differing label is not the runner-up"


def assert_codes_within_one_step(got: np.ndarray, want: np.ndarray) -> None:
    """Quantized codes (integer PNG values) of two float paths differ by at most one step,
    and invalid (code 0) exactly where the other path has it."""
    a, b = np.asarray(got).astype(np.int64), np.asarray(want).astype(np.int64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(a == 0, b == 0), "valid pixels differ"
    worst = int(np.abs(a - b).max(initial=0))
    assert worst <= 1, f"codes differ by {worst} steps (at most 1 expected)"
