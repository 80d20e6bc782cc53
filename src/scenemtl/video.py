"""Video in and out with PyAV (FFmpeg): frames decoded in batches of bounded size, and a
video written frame by frame, so that memory does not grow with the length of a video.

Errors of the file (missing, not a video, corrupt, an unsupported codec) are one
:class:`~scenemtl.errors.UserError` line naming the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from scenemtl.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
"""Inputs read as videos (by suffix, any case)."""
CODEC = "libx264"
"""H.264 in yuv420p: what every player opens. Its frame sides must be even: odd sides are
padded by one black row or column."""
DEFAULT_FPS = Fraction(30)
"""The frame rate written when a video does not declare one."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise UserError("video needs PyAV: pip install 'scenemtl[video]'") from None
    return av


class VideoReader:
    """The frames of one video file, as uint8 RGB arrays.

    Attributes:
        fps: the stream's average frame rate (:data:`DEFAULT_FPS` when it has none).
        width, height: frame size in pixels.
        frames: the frame count the container declares (0 when it does not say).

    Raises:
        UserError: the file does not exist, is not a video, or has no video stream.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"video {self.path} does not exist")
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise UserError(f"video {self.path}: cannot be read ({_reason(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"video {self.path}: has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = Fraction(rate) if rate else DEFAULT_FPS
        self.width, self.height = int(stream.width), int(stream.height)
        self.frames = int(stream.frames or 0)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive frames, ``batch_size`` at a time (the last batch may be shorter):
        uint8 [N,H,W,3].

        Raises:
            UserError: the stream is corrupt where decoding reached (the batches before it
                were yielded).
        """
        av = _av()
        batch: list[np.ndarray] = []
        try:
            for frame in self._container.decode(self._stream):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == batch_size:
                    yield np.stack(batch)
                    batch = []
        except av.error.FFmpegError as e:
            raise UserError(f"video {self.path}: corrupt stream ({_reason(e)})") from None
        if batch:
            yield np.stack(batch)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Writes uint8 RGB frames [H,W,3] of one size to an H.264 file.

    The file appears at ``path`` only when the writer is closed without an error: frames
    go to a temporary file beside it, renamed at the end, so that an interrupted or
    failed run never leaves a truncated video where a finished one was.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(
                f"output video {self.path}: unknown suffix; use one of {', '.join(VIDEO_SUFFIXES)}"
            )
        if not self.path.parent.is_dir():
            raise UserError(f"output video {self.path}: folder {self.path.parent} does not exist")
        self.fps = fps
        self.frames_written = 0
        handle, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=self.path.suffix
        )
        os.close(handle)
        self._temporary = Path(temporary)
        self._container = _av().open(str(self._temporary), mode="w")
        self._stream: Any = None

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H,W,3] frame (every frame has the first one's size)."""
        av = _av()
        height, width = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream(CODEC, rate=self.fps)
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
        padded = np.zeros((self._stream.height, self._stream.width, 3), np.uint8)
        padded[:height, :width] = frame
        video_frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file and move it into place (``keep``), or delete it."""
        try:
            if keep and self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
            if keep and self._stream is not None:
                os.replace(self._temporary, self.path)
        finally:
            self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(keep=error is None)


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__
