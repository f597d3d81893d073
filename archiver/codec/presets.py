"""The architecture presets of ConvNeXt-ChARM and the quality <-> lambda mapping: plain data, no
torch, so that the command line can list the presets (``archiver train --preset``) without loading
the model code, and every stored preset (next to its weights) is checked in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Quality q in [0, 100] <-> rate-distortion trade-off lambda (loss = lambda * 255^2 * MSE + bpp).
LAMBDA_MIN = 0.0016
LAMBDA_MAX = 0.45


def quality_to_lambda(q: float, preset: "Preset | None" = None) -> float:
    """Log-linear: q=0 -> the preset's lambda_min, q=100 -> its lambda_max (training only: at
    inference a quality selects gain vectors, and lambda is never used)."""
    lo, hi = (preset.lambda_min, preset.lambda_max) if preset is not None else (LAMBDA_MIN, LAMBDA_MAX)
    q = min(max(float(q), 0.0), 100.0)
    return lo * (hi / lo) ** (q / 100.0)


SCALE_RULES = ("up", "nearest")
#: where the y symbols' CDF tables come from: "gaussian" (built from the scale table at export)
#: or "fitted" (measured on the symbols the encoder writes, ``archiver.table_fit``; shipped as is)
Y_TABLES = ("gaussian", "fitted")
DESIGNS = ("compact", "complete")
CONTEXTS = ("channel", "checkerboard")


@dataclass(frozen=True)
class Preset:
    """Architecture hyper-parameters; stored next to the weights so a model id is self-describing."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    latent: int  # M, channels of y
    hyper_width: int
    z_channels: int
    hyper_blocks: int
    slices: int
    support: int  # K: previous slices a slice is conditioned on
    slice_width: int
    slice_blocks: int
    full_hyper: bool  # condition each slice on the full hyper means/scales (paper) or its own slice
    levels: int = 8  # gain vectors, interpolated for continuous quality
    # How a scale picks its table entry: "up" (the first entry >= scale; compact-v1) or "nearest"
    # (nearest in log, about 1 % less rate; see scale_indexes). Part of the bitstream format,
    # so it is fixed per model id; a stored preset without it is an "up" model.
    scale_rule: str = "up"
    # "compact" (compact-v1..v4): patchify stages with LayerNorm down to 1/16, M < input values.
    # "complete" (complete.py): a DCT stem of stride ``stride`` with 3*stride^2 = M channels and
    # ConvNeXt blocks at 1/stride; ``depths`` is then (analysis blocks, synthesis blocks), dims
    # is (M,) and ``expansion`` the blocks' MLP width factor.
    design: str = "compact"
    stride: int = 16
    expansion: int = 4
    # the training trade-off range of the quality knob (q=0 .. q=100), see quality_to_lambda
    lambda_min: float = LAMBDA_MIN
    lambda_max: float = LAMBDA_MAX
    # "channel" (ChARM as published: each slice from the hyperprior and earlier slices) or
    # "checkerboard": in addition, each slice is coded in two passes, and the second half of its
    # positions is refined from the decoded first half around it (see SpatialContext)
    context: str = "channel"
    context_width: int = 64
    # checkerboard only: in the first ``split_anchors`` slices the anchors are coded in two
    # passes, and the second quarter of positions is refined from the first (see coding_passes)
    split_anchors: int = 0
    # how often those slices' anchor lattice is halved (coding_passes): 1 = the anchors in two
    # passes; 2 and 3 split the first quarter again, once or twice, so that only an eighth or a
    # sixteenth of the positions is coded without any decoded neighbour
    split_depth: int = 1
    # "gaussian": each scale index's table is the quantised Gaussian of that scale (what the
    # model trains under); "fitted": the tables were fitted to the symbols the encoder writes
    # (``archiver fit-tables``) and ship as they are. Same offsets and lengths, same decoder.
    y_tables: str = "gaussian"

    def __post_init__(self) -> None:
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"unknown scale_rule {self.scale_rule!r}; known: {SCALE_RULES}")
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}; known: {DESIGNS}")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; known: {CONTEXTS}")
        if not 0 <= self.split_anchors <= self.slices:
            raise ValueError(f"split_anchors must be in 0..{self.slices}")
        if self.split_anchors and self.context != "checkerboard":
            raise ValueError("split_anchors needs the checkerboard context")
        if self.y_tables not in Y_TABLES:
            raise ValueError(f"unknown y_tables {self.y_tables!r}; known: {Y_TABLES}")
        if self.split_depth not in (1, 2, 3):
            raise ValueError("split_depth must be 1, 2 or 3")
        if self.split_depth > 1 and not self.split_anchors:
            raise ValueError("split_depth > 1 needs split_anchors")
        if self.design == "complete" and self.latent != 3 * self.stride**2:
            raise ValueError("a complete design keeps every value: latent must be 3 * stride^2")

    @property
    def z_stride(self) -> int:
        """Pixels per hyper-latent position (y is at 1/stride, z two 2x stages below)."""
        return 4 * self.stride

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        d = dict(d)
        d["dims"], d["depths"] = tuple(d["dims"]), tuple(d["depths"])
        return cls(**d)


# compact-v5 on: 8x8 DCT stem (complete: 192 values per 192 pixel values), ConvNeXt blocks at 1/8,
# a quality range reaching ~47 dB (docs/MODEL.md, design study). Every shipped preset since is
# this one with a spatial context added.
_COMPLETE8 = Preset(dims=(192,), depths=(2, 4), latent=192, hyper_width=128, z_channels=128, hyper_blocks=1,
                    slices=8, support=4, slice_width=96, slice_blocks=1, full_hyper=False, scale_rule="nearest",
                    design="complete", stride=8, expansion=2, lambda_min=0.01, lambda_max=1.6)
# compact-v5's architecture: complete8 plus the checkerboard spatial context in every slice
_COMPLETE8_CB = replace(_COMPLETE8, context="checkerboard")

PRESETS: dict[str, Preset] = {
    # the paper's configuration (about 122M parameters with paper-size slice transforms)
    "paper": Preset(dims=(128, 192, 256, 320), depths=(3, 3, 9, 3), latent=320, hyper_width=192,
                    z_channels=192, hyper_blocks=5, slices=10, support=5, slice_width=224,
                    slice_blocks=2, full_hyper=True),
    # compact-v1..v4: small enough to train in our GPU budget and to decode fast on a CPU
    "compact": Preset(dims=(64, 96, 144, 192), depths=(2, 2, 4, 2), latent=192, hyper_width=128,
                      z_channels=128, hyper_blocks=1, slices=8, support=4, slice_width=96,
                      slice_blocks=1, full_hyper=False),
    "complete8": _COMPLETE8,
    "complete8-cb": _COMPLETE8_CB,
    # complete8-cb with the anchors of every slice coded in two passes (coding_passes); grown
    # from a complete8-cb model with --extend-to, the new layers start as a no-op
    "complete8-cb-split": replace(_COMPLETE8_CB, split_anchors=8),
    # complete8-cb with only slice 0's anchors split: slice 0 holds 42 % of the bits on Kodak and
    # 69 % on smooth, enlarged content, so it gets the extra pass at an eighth of the cost of
    # splitting every slice (issue 24); grown with --extend-to, the new layer starts as a no-op
    "complete8-cb-split1": replace(_COMPLETE8_CB, split_anchors=1),
    # complete8-cb-split1 with slice 0's first quarter split again, once (d2) or twice (d3):
    # see coding_passes; grown with --extend-to (and --fit-context), the new layers start as a
    # no-op
    **{f"complete8-cb-split1d{d}": replace(_COMPLETE8_CB, split_anchors=1, split_depth=d) for d in (2, 3)},
    # the study's stride-16 variant: 16x16 DCT, 768 channels at 1/16 (docs/MODEL.md)
    "complete16": replace(_COMPLETE8, dims=(768,), latent=768, slice_width=128, stride=16),
}

#: the presets a model can be grown into with ``archiver train --extend-to`` (train.py): those
#: with the checkerboard context, which is what growing adds or splits further
EXTENDABLE = tuple(name for name, p in PRESETS.items() if p.context == "checkerboard")
