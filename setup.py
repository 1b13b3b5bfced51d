"""Build hooks that ship ``llava_freepruner_autoload.pth``; metadata lives in setup.cfg.

A regular wheel gets the .pth from ``build_py`` (its build dir is the wheel root).
An editable (PEP 660) wheel is assembled without that build dir, so the .pth is
added to the finished wheel, with its RECORD line.
"""

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_SOURCE = Path(__file__).resolve().parent / "llava_freepruner_autoload.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            target = os.path.join(self.build_lib, PTH_SOURCE.name)
            self.copy_file(str(PTH_SOURCE), target, preserve_mode=False)


class EditableWheelWithPth(editable_wheel):
    def run(self):
        super().run()
        wheels = sorted(Path(self.dist_dir).glob("*.whl"), key=os.path.getmtime)
        if not wheels:
            raise RuntimeError(f"editable_wheel left no wheel in {self.dist_dir}")
        add_file_to_wheel(wheels[-1], PTH_SOURCE)


def add_file_to_wheel(wheel_path, file_path):
    """Rewrite ``wheel_path`` with ``file_path`` at its root, listed in RECORD."""
    data = file_path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    record_line = f"{file_path.name},sha256={digest.decode()},{len(data)}\n".encode()
    partial = wheel_path.with_name(wheel_path.name + ".partial")
    with zipfile.ZipFile(wheel_path) as old, zipfile.ZipFile(
        partial, "w", zipfile.ZIP_DEFLATED
    ) as new:
        for entry in old.infolist():
            content = old.read(entry)
            if entry.filename.endswith(".dist-info/RECORD"):
                content = content.rstrip(b"\n") + b"\n" + record_line
            new.writestr(entry, content)
        new.writestr(file_path.name, data)
    os.replace(partial, wheel_path)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
