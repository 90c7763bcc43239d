"""Where the package's shared files (launch/, config/) are: the ament share directory, or the source tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "chatrex_ros"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """The package's share directory: the source tree in a checkout, else the installed ``share/chatrex_ros``.

    In a source checkout the repository root is used so that edits to launch/ and config/ take effect;
    otherwise it is ``share/chatrex_ros`` of the install (colcon or pip).
    """
    if (_SOURCE_ROOT / "package.xml").is_file() and (_SOURCE_ROOT / "config").is_dir():
        return _SOURCE_ROOT
    # The PyPI ROS wheels do not set AMENT_PREFIX_PATH; their prefix is the environment itself.
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        candidate = Path(get_package_share_directory(PACKAGE))
        if (candidate / "config").is_dir():
            return candidate
    except (ImportError, PackageNotFoundError, OSError):
        pass
    raise FileNotFoundError(f"cannot find the {PACKAGE} share directory (config/, launch/): is the package installed?")


def config_file(name: str) -> Path:
    """The path of ``config/<name>`` in :func:`share_dir`; FileNotFoundError if it is missing."""
    path = share_dir() / "config" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path
