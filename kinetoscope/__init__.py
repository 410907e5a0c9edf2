"""kinetoscope: open Sora-style text-to-video."""

from kinetoscope.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
