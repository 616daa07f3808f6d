"""antspyx without the import time of subpackages no flowlet job calls."""

from __future__ import annotations

import importlib
import sys
import types

# Importing antspyx also imports subpackages that no flowlet job calls and that pull in matplotlib, statsmodels,
# scipy.stats and scikit-learn: over half of its import time, paid by every per-subject job. (No other antspyx
# module imports them; the rest reach them as ``ants.<name>`` at call time.) They load on first use instead.
_DEFERRED_SUBPACKAGES = ("plotting", "learn", "math", "deeplearn")


def import_ants():
    """The ``ants`` package, imported without its plotting, learning, statistics and deep-learning
    subpackages; any of their names (``ants.plot``, ``ants.learn``, ``ants.image_similarity``, ...) still works
    and imports them then."""
    if "ants" in sys.modules:
        return sys.modules["ants"]
    placeholders = {f"ants.{name}": types.ModuleType(f"ants.{name}") for name in _DEFERRED_SUBPACKAGES}
    for placeholder in placeholders.values():
        placeholder.__all__ = []  # ants/__init__ star-imports each subpackage: nothing from a placeholder
    sys.modules.update(placeholders)
    try:
        import ants
    finally:
        for name, placeholder in placeholders.items():
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]
    ants.__getattr__ = _load_deferred
    return ants


def _load_deferred(name: str):
    """Module ``__getattr__`` of ``ants`` (PEP 562): a name ``ants`` lacks is looked up in the deferred
    subpackages, which are imported now and star-imported into ``ants`` as its own ``__init__`` would."""
    ants = sys.modules["ants"]
    del ants.__getattr__
    for subpackage in _DEFERRED_SUBPACKAGES:
        module = importlib.import_module(f"ants.{subpackage}")
        public = getattr(module, "__all__", [key for key in vars(module) if not key.startswith("_")])
        for key in public:
            setattr(ants, key, getattr(module, key))
    return getattr(ants, name)
