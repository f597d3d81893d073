"""The model id the package uses when none is configured, in a module without torch.

Settings (which every front door loads, including light ones such as ``archiver status``) and the
CLI's help texts read it from here, the registry re-exports it; so shipping a new default model is
this one line plus ``config/archiver.toml`` (see docs/MODEL.md, GPU runbook step 2).
"""

DEFAULT_MODEL = "compact-v6"
