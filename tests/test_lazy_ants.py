"""antspyx imported without its unused subpackages still offers all of its names."""

import subprocess
import sys
import textwrap


def test_ants_imports_lean_and_loads_the_deferred_subpackages_on_first_use():
    # A fresh interpreter: in this test session ants may already have been imported in full.
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from flowlet.lazy_ants import import_ants

        ants = import_ants()
        heavy = sorted(name for name in ("sklearn", "statsmodels", "matplotlib") if name in sys.modules)
        assert not heavy, heavy
        assert import_ants() is ants
        image = ants.from_numpy(np.random.default_rng(0).random((12, 12, 12), dtype=np.float32) + 1)
        assert ants.n4_bias_field_correction(image, shrink_factor=1).shape == (12, 12, 12)
        assert "ants.plotting" not in sys.modules
        assert callable(ants.plot) and callable(ants.image_similarity)
        assert ants.learn.__name__ == "ants.learn" and "sklearn" in sys.modules
        try:
            ants.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("an unknown name must still raise AttributeError")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
