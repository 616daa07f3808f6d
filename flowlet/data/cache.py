"""A per-user cache of arrays derived from installed packages' data (templates and atlas on FSL's grids).

Every per-subject job needs the MNI152 template, its brain mask, tissue priors or the atlas on FSL's grid;
deriving them means importing nilearn and resampling 1 mm images, about 2 s per job, which on a small study's
hundred short jobs is minutes. The first job saves each array as ``.npy`` and later jobs load it in
milliseconds. The file name holds the source package's version and a derivation version, so an upgrade or a
change in how an array is derived never reads a stale file. The folder is ``$FLOWLET_CACHE_DIR``, else
``$XDG_CACHE_HOME/flowlet``, else ``~/.cache/flowlet``; ``FLOWLET_CACHE_DIR=off`` turns the cache off. A
folder that cannot be written is not an error: the arrays are then derived in every process, as without it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_ENV = "FLOWLET_CACHE_DIR"
DISABLED = "off"


def cache_folder() -> Path | None:
    """Where cached arrays live, or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured == DISABLED:
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "flowlet"


def cached_array(
    name: str, source_package: str, derivation: int, compute: Callable[[], np.ndarray], shape: tuple[int, ...]
) -> np.ndarray:
    """``compute()``, saved under a name that holds ``source_package``'s version and ``derivation``.

    A cached file of another shape (or unreadable) is derived again and replaced."""
    folder = cache_folder()
    if folder is None:
        return compute()
    path = folder / f"{name}_{source_package}-{metadata.version(source_package)}_v{derivation}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == tuple(shape):
            return cached
        log.warning("cached %s has shape %s, expected %s; deriving it again", path, cached.shape, tuple(shape))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:
        log.warning("cannot read the cached %s (%s); deriving it again", path, error)
    array = compute()
    _save_atomically(path, array)
    return array


def _save_atomically(path: Path, array: np.ndarray) -> None:
    # Parallel jobs may derive the same array at once: each writes its own file and renames it into place.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".npy", delete=False)
    except OSError as error:
        log.debug("not caching %s: %s", path, error)
        return
    temporary = Path(handle.name)
    try:
        with handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        log.debug("not caching %s: %s", path, error)
