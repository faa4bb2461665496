"""relgen: relation-aware text-to-image generation on Stable Diffusion backbones.

Importing this package is cheap: torch, diffusers and dgl are imported only when a
function that needs them runs.
"""

__version__ = "0.1.0"


def load(run_dir, **kwargs):
    """Load a finished run's exported artifact; see :func:`relgen.api.load`."""
    from relgen.api import load as _load

    return _load(run_dir, **kwargs)
