"""The model id the package uses when none is configured, in a module without torch.

Settings (which every front door loads, including light ones such as ``archiver status``) and the
CLI's help texts read it from here, the registry re-exports it; so shipping a new default model is
this one line plus ``config/archiver.toml`` (see docs/MODEL.md, GPU runbook step 2).
"""

DEFAULT_MODEL = "compact-v18"

#: encoder effort levels (``Codec.encode_detailed(effort=...)``, the ``effort`` setting): 0 rounds
#: every latent (every release before issue 24), 1 adds rate-distortion optimised quantisation
#: (codec/rdo.py). Each level writes streams that the one decoder reads.
EFFORTS = (0, 1)
#: what the pipeline uses unless configured: RDOQ costs about 1.3x the encoder time of effort 0
DEFAULT_EFFORT = 1
