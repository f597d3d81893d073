"""CompressAI's entropy models and rANS coder, imported in one place and quietly.

compressai 1.2.8 imports torch_geometric at start-up (for its point-cloud datasets), and that
import calls ``torch.jit.script``, which current torch flags with a FutureWarning. Every CLI
command, worker and server start printed it, although it concerns neither our code nor anything
a user can change. It is silenced here, for that one message and only during this import; any
other warning still shows.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder, RansEncoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

__all__ = ["BufferedRansEncoder", "EntropyBottleneck", "GaussianConditional", "RansDecoder", "RansEncoder"]
