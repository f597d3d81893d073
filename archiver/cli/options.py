"""Options that several commands share, defined once so that their help and range agree."""

from __future__ import annotations

import click

from ..codec.default import EFFORTS

#: ``--effort`` of every command that encodes for the archive (None: the ``effort`` setting)
effort_option = click.option(
    "--effort", type=click.IntRange(min(EFFORTS), max(EFFORTS)), default=None,
    help="encoder effort: 0 plain rounding, 1 rate-distortion optimised quantisation (~3-4 % smaller at equal "
         "PSNR, ~1.3x encode time) [settings: 1]")

#: ``--policy`` of the commands that store (or project) archives (None: the ``policy`` setting)
policy_option = click.option(
    "--policy", type=click.Choice(("lossy", "lossless", "best")), default=None,
    help="tiers to store: lossy (neural codec), lossless (JPEG originals as bit-exact JPEG XL only), "
         "best (the smaller verified archive per object) [settings: best]")
