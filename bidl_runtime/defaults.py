"""Defaults of the runtime's entry points."""
import os
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "bidl_models" / "weights"   # shipped inside the package
DEFAULT_CONFIG = "clif3fc3dm_itout-b16x1-dvsglyphs"   # SeqClif3Fc3DmItout, 2x40x40, T=20, generated DVS data
FALLBACK_CONFIG = "clif3fc3dm_itout-b16x1-dvsmnist"


def default_config() -> str:
    """The default config's name (the generated-data one once it exists)."""
    from bidl_models.config import find_config
    try:
        find_config(DEFAULT_CONFIG)
        return DEFAULT_CONFIG
    except FileNotFoundError:
        return FALLBACK_CONFIG


def default_checkpoint(config_name: str) -> Path | None:
    """Shipped weights for a config: ``bidl_models/weights/<config>.pth`` if present."""
    p = WEIGHTS / f"{config_name}.pth"
    return p if p.is_file() else None


def default_threads(cells: int) -> int:
    """Intra-op threads per cell so that the cells on this machine share its cores."""
    return max(1, (os.cpu_count() or 1) // max(1, cells))
