"""An ImageFolder that skips images it cannot decode, names them in a warning, and counts them."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .images import ImageDecodeError, looks_intact, open_image


class TolerantImageFolder(ImageFolder):
    """torchvision's ImageFolder (root/class_name/*.jpg, ...), images as RGB PIL images (vitkit.data.images:
    EXIF orientation, 16-bit, palette, alpha and CMYK handled).

    Files with an image extension that are not whole images (by a cheap check of each file when the
    folder is indexed) are left out with a warning naming each; `skipped` lists them. One that fails
    only when decoded is replaced by the next image of the folder, with a warning (counted in
    `skipped` when it happens in this process rather than in a DataLoader worker).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        class_dirs = sorted(d.name for d in os.scandir(root) if d.is_dir()) if root.is_dir() else []
        if not class_dirs:
            raise ValueError(f"imagefolder: {root} has no class folders (expected {root}/CLASS_NAME/IMAGE.jpg)")
        self.skipped: list[str] = []
        super().__init__(str(root), loader=open_image, is_valid_file=self._check_file, allow_empty=True)
        if not self.samples:
            raise ValueError(f"imagefolder: no decodable images ({', '.join(IMG_EXTENSIONS)}) under {root}")

    def _check_file(self, path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        problem = looks_intact(path)
        if problem is None:
            return True
        warnings.warn(f"imagefolder: {path} is left out: {problem} (fix or remove the file)", stacklevel=2)
        self.skipped.append(path)
        return False

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                return super().__getitem__(i)
            except ImageDecodeError as e:
                path = self.samples[i][0]
                if path not in self.skipped:
                    warnings.warn(f"imagefolder: {e}; another image is read in its place (fix or remove the file)",
                                  stacklevel=2)  # fmt: skip
                    self.skipped.append(path)
        raise ValueError(f"imagefolder: no image under {self.root} could be decoded")
