"""Video files in, frames out: PyAV decoding, uniform sampling, offline sample clips.

Frames are sampled uniformly over the clip, as transformers' examples for
Video-LLaVA and LLaVA-NeXT-Video do (``np.arange(0, total, total / n)``).
Errors name the file and what was expected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import List

# Frames each model family samples by default (transformers' examples; OneVision: lmms-eval's 32).
DEFAULT_FRAMES = {"video_llava": 8, "llava_next_video": 8, "llava_onevision": 32}
# Real clips shipped by Debian's opencv-doc package, in its examples data folder.
OPENCV_CLIPS = ("vtest.avi", "Megamind.avi", "tree.avi")
_OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"


def sample_indices(total: int, count: int) -> List[int]:
    """``count`` frame indices spread uniformly over ``total`` frames, starting at 0."""
    return [int(i * total / count) for i in range(count)]


def read_frames(path: str, count: int) -> list:
    """``count`` frames of the clip at ``path``, uniformly sampled, as RGB PIL images."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"read_frames count={count!r}: expected a whole number of frames >= 1")
    import av

    if not os.path.isfile(path):
        raise ValueError(f"--video {path!r}: no such file")
    try:
        with av.open(path) as container:
            # count from the packets (cheap), then decode once, converting the sampled frames only
            total = sum(1 for packet in container.demux(video=0) if packet.size)
            if total < count:
                raise ValueError(f"video {path!r} has {total} frames; {count} are needed "
                                 "(the model samples that many: give a longer clip or fewer frames)")
            wanted = set(sample_indices(total, count))
            container.seek(0)
            frames = [frame.to_image().convert("RGB") for i, frame in enumerate(container.decode(video=0)) if i in wanted]
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"cannot decode video {path!r} (corrupt or not a video file): {err}") from None
    if len(frames) < count:
        raise ValueError(f"video {path!r}: only {len(frames)} of its frames decode; {count} are needed")
    return frames


def clip_folder(cache: str = None) -> str:
    """The folder holding the opencv-doc sample clips: the installed package's, or a
    cached copy unpacked from ``apt-get download opencv-doc`` (fetched on first use)."""
    installed = os.path.join("/", _OPENCV_DATA)
    if all(os.path.isfile(os.path.join(installed, c)) for c in OPENCV_CLIPS):
        return installed
    cache = cache or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                  "llava_freepruner", "opencv-doc")
    folder = os.path.join(cache, _OPENCV_DATA)
    if all(os.path.isfile(os.path.join(folder, c)) for c in OPENCV_CLIPS):
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("the sample clips come from Debian's opencv-doc package, and apt-get/dpkg are not "
                           "available here: install opencv-doc or copy its examples/data folder to " + folder)
    os.makedirs(cache, exist_ok=True)      # dpkg -x does not create missing parents
    with tempfile.TemporaryDirectory() as download:
        try:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=download, check=True, capture_output=True)
            package = next(n for n in os.listdir(download) if n.endswith(".deb"))
            subprocess.run(["dpkg", "-x", os.path.join(download, package), cache], check=True, capture_output=True)
        except (subprocess.CalledProcessError, StopIteration) as err:
            raise RuntimeError(f"cannot fetch the opencv-doc sample clips with apt-get download: {err}") from None
    return folder
