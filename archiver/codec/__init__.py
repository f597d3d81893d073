"""ConvNeXt-ChARM codec: ``Codec.load(model, device)``, ``encode``, ``decode``.

Imports are lazy so that light users (``archiver info``, the container parser) do not pay for
loading torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Codec", "DecodedImage", "EncodeResult", "TargetNotReached"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
