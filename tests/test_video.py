"""Video in and out (scenemtl.video): frames, frame rate and size survive a round trip,
bad files are one line, and a failed write leaves nothing behind."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from scenemtl.errors import UserError
from scenemtl.video import VideoReader, VideoWriter

pytest.importorskip("av")


def frames(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Flat grey frames whose level encodes their index (robust to H.264's loss)."""
    return [np.full((height, width, 3), (10 + 20 * i) % 250, np.uint8) for i in range(count)]


def write(path, images, fps=Fraction(12)) -> None:
    with VideoWriter(path, fps) as writer:
        for image in images:
            writer.write(image)


def test_round_trip_keeps_order_rate_and_size(tmp_path):
    path = tmp_path / "drive.mp4"
    write(path, frames(11))
    with VideoReader(path) as video:
        assert (video.width, video.height, video.fps) == (64, 48, Fraction(12))
        batches = list(video.batches(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    levels = np.concatenate(batches).reshape(11, -1).mean(axis=1)
    # flat frames come back within a few levels (H.264 at its default quality)
    np.testing.assert_allclose(levels, [(10 + 20 * i) % 250 for i in range(11)], atol=3)


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    write(path, frames(3, height=47, width=63))
    with VideoReader(path) as video:
        assert (video.width, video.height) == (64, 48)
        (batch,) = list(video.batches(8))
    assert batch[:, 47, :].max() < 20 and batch[:, :47, :63].min() > 0


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), (b"not a video at all", "cannot be read"), (b"", "cannot be read")],
)
def test_bad_inputs_are_one_line(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        VideoReader(path)
    assert "\n" not in str(error.value)


def test_a_truncated_video_yields_what_it_has_or_one_line(tmp_path):
    path = tmp_path / "drive.mp4"
    write(path, frames(20))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    try:
        with VideoReader(cut) as video:
            got = sum(len(b) for b in video.batches(4))
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert got < 20


def test_a_failed_write_leaves_no_file_and_keeps_the_earlier_one(tmp_path):
    path = tmp_path / "out.mp4"
    write(path, frames(3))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), VideoWriter(path, Fraction(12)) as writer:
        writer.write(frames(1)[0])
        raise RuntimeError("interrupted")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_unknown_output_suffix_is_refused(tmp_path):
    with pytest.raises(UserError, match="suffix"):
        VideoWriter(tmp_path / "out.gif", Fraction(12))
