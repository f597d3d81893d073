"""Codec front door: ``archiver encode|decode|info|train|fit-tables|eval|register-model|models``. Thin wrappers
over archiver.codec (and, for ``models --db``, the ledger)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..codec.default import EFFORTS
from ..codec.presets import EXTENDABLE, PRESETS
from ..errors import ArchiverError
from .options import effort_option
from .consoles import LogTicker, err_console as console, fail, table_console


def _ticker() -> LogTicker:
    from .runtime import settings

    return LogTicker(console, settings().log_progress_every)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


@click.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quality", "-q", type=click.FloatRange(0, 100), help="continuous quality 0..100")
@click.option("--target-psnr", type=click.FloatRange(1, 99), help="smallest bitstream whose decoded PSNR meets this (dB)")
@click.option("--model", default=None, help="model id (default from settings)")
@click.option("--device", default="auto", show_default=True)
@effort_option
def encode(src: Path, dst: Path, quality: float | None, target_psnr: float | None, model: str | None, device: str,
           effort: int | None) -> None:
    """Encode an image file into a .cxa container."""
    from ..codec import Codec
    from ..codec.registry import DEFAULT_MODEL
    from ..images import load_image

    if quality is None and target_psnr is None:
        quality = 75.0
    if quality is not None and target_psnr is not None:
        raise click.UsageError("give --quality or --target-psnr, not both")
    from .runtime import settings

    try:
        st = settings()
        img = load_image(src.read_bytes(), max_pixels=400_000_000)
        codec = Codec.load(model or st.model_id or DEFAULT_MODEL, device, settings=st)
        res = codec.encode_detailed(img, quality=quality, target_psnr=target_psnr,
                                    effort=st.effort if effort is None else effort)
    except ArchiverError as e:
        fail(e)
    dst.write_bytes(res.data)
    console.print(
        f"{escape(src.name)}: {img.original_bytes:,} -> {len(res.data):,} bytes ({res.bpp:.3f} bpp), "
        f"quality {res.quality:.2f}, PSNR {res.psnr:.2f} dB, effort {st.effort if effort is None else effort}, "
        f"{res.seconds:.2f} s"
    )


@click.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True)
def decode(src: Path, dst: Path, device: str) -> None:
    """Decode a .cxa container to an image (format from DST's extension: png, jpg, webp)."""
    from ..codec.container import read_meta
    from ..images import save_image
    from ..restore import decode_container
    from .runtime import runtime

    from ..lossless import is_jpegxl
    from ..restore import restore_image

    data = src.read_bytes()
    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}.get(dst.suffix.lower().lstrip("."), "png")
    if is_jpegxl(data):  # a lossless-tier archive: the original JPEG, byte for byte, for a .jpg name
        try:
            out, used = restore_image(data, None, fmt, max_pixels=int(runtime().settings.max_pixels))
        except ArchiverError as e:
            fail(e)
        dst.write_bytes(out)
        console.print(f"{escape(src.name)} -> {escape(str(dst))} (lossless tier: "
                      f"{'the original JPEG, byte for byte' if used == 'jpeg' else 'decoded from the original JPEG'})")
        return
    try:
        rt = runtime()
        st = rt.settings
        meta = read_meta(data, max_pixels=st.max_pixels)  # the decompression-bomb limit, as for every front door
        # the one way every front door decodes: a model the package lacks comes from the store
        dec = decode_container(data, rt, device, max_pixels=st.max_pixels)
    except ArchiverError as e:
        fail(e)
    dst.write_bytes(save_image(dec.image, fmt, icc=dec.icc, exif=dec.exif))
    console.print(f"{escape(src.name)} -> {escape(str(dst))} ({meta.width}x{meta.height} {meta.mode}, {dec.seconds:.2f} s)")


@click.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(src: Path, as_json: bool) -> None:
    """Show a container's header without decoding it."""
    from dataclasses import asdict

    from ..codec.container import read_meta, read_version

    from ..lossless import Tier, is_jpegxl, probe_jpeg, reconstruct

    data = src.read_bytes()
    try:
        if is_jpegxl(data):  # a lossless-tier archive: describe the JPEG it rebuilds
            jpeg = reconstruct(data)
            j = probe_jpeg(jpeg)
            d = {"tier": Tier.LOSSLESS.value, "format": "JPEG XL (JPEG reconstruction)", "width": j.width,
                 "height": j.height, "components": j.components, "progressive": j.progressive,
                 "original_content_type": "image/jpeg", "original_bytes": len(jpeg),
                 "original_sha256": hashlib.sha256(jpeg).hexdigest(), "container_bytes": len(data),
                 "saving_pct": round(100 * (1 - len(data) / len(jpeg)), 2),
                 "bpp": round(len(data) * 8 / max(1, j.width * j.height), 4)}
            meta = None
        else:
            meta = read_meta(data)
    except ArchiverError as e:
        fail(e)
    if meta is not None:
        d = {"tier": Tier.LOSSY.value, **asdict(meta)}
        d["container_version"] = read_version(data)
        d["container_bytes"] = len(data)
        d["bpp"] = round(len(data) * 8 / (meta.width * meta.height), 4)
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    t = Table(show_header=False)
    for k, v in d.items():
        t.add_row(k, str(v))
    table_console().print(t)


@click.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="image folder (repeatable); e.g. ../shared/data/train/shard-00")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output .safetensors")
@click.option("--preset", default="complete8", type=click.Choice(list(PRESETS)), show_default=True)
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="start from these weights")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--crop", default=256, show_default=True, help="crop size, a multiple of 64")
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--compile/--no-compile", default=False, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="stop (and save) after this long")
@click.option("--seed", default=0, show_default=True)
@click.option("--schedule", default="cosine", type=click.Choice(["cosine", "step"]), show_default=True,
              help="lr schedule over steps or --max-minutes, whichever ends first")
@click.option("--warmup", default=100, show_default=True, help="steps of linear lr warm-up")
@click.option("--q-sampling", default="uniform", type=click.Choice(["uniform", "high"]), show_default=True,
              help="how each image's quality is drawn: uniform in [0, 100], or 100*sqrt(u) (toward high quality)")
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0: one per core)")
@click.option("--entropy-lr-scale", default=1.0, show_default=True,
              help="lr factor of the entropy model (h_s, slice transforms, LRP, z density)")
@click.option("--extend-to", default=None, type=click.Choice(EXTENDABLE),
              help="with --resume: grow the resumed model into this preset (adds the checkerboard context, "
                   "splits the anchors' pass of slice 0 or of every slice, or splits slice 0's first quarter again)")
@click.option("--fit-context", is_flag=True,
              help="with --extend-to a split-anchor preset: start each new split-anchor or lattice context as the "
                   "least-squares linear predictor from its decoded neighbours, not as a no-op (with --steps 0: only that)")
@click.option("--train-only", multiple=True, metavar="PREFIX",
              help="train only parameters whose names start with PREFIX (repeatable), e.g. anchor_tf; with only g_s "
                   "(the synthesis: no symbol changes) a resumed file's fitted y tables are kept")
@click.option("--upsample-prob", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="share of crops cut smaller and enlarged to --crop (smooth, camera-like content)")
@click.option("--upsample-max", default=2.0, show_default=True, type=click.FloatRange(1.0, 4.0),
              help="largest enlargement factor of those crops (drawn uniformly from 1 to this)")
@click.option("--rdo-strength", default=0.0, show_default=True, type=click.FloatRange(0.0, 100.0),
              help="train on the symbols effort 1's RDOQ writes at this strength (the encoder's is 1.5) "
                   "instead of rounded ones (0)")
def train(data, out, preset, resume, steps, batch, crop, lr, device, compile, max_minutes, seed, schedule,
          warmup, q_sampling, threads, entropy_lr_scale, extend_to, fit_context, train_only, upsample_prob,
          upsample_max, rdo_strength) -> None:
    """Train the variable-rate model; logs loss/bpp/PSNR to OUT.log.jsonl."""
    from ..train import TrainConfig, train as run

    if crop % 64:
        raise click.UsageError("--crop must be a multiple of 64")
    cfg = TrainConfig(data=list(data), out=out, preset=preset, resume=resume, steps=steps, batch=batch, crop=crop,
                      lr=lr, device=device, compile=compile, max_minutes=max_minutes, seed=seed,
                      schedule=schedule, warmup=warmup, q_sampling=q_sampling, threads=threads,
                      entropy_lr_scale=entropy_lr_scale, extend_to=extend_to,
                      upsample_prob=upsample_prob, upsample_max=upsample_max, train_only=tuple(train_only),
                      fit_context=fit_context, rdo_strength=rdo_strength)
    ticker = _ticker()
    with _progress() as prog:
        task = prog.add_task("training", total=steps, info="")

        def cb(step: int, total: int, m: dict) -> None:
            info = f"bpp {m['bpp']:.3f} PSNR {m['psnr']:.2f} dB loss {m['loss']:.3f}"
            prog.update(task, completed=step, info=info)
            if ticker.due():
                console.print(f"training: step {step}/{total} | {info}", highlight=False)

        run(cfg, cb)
    console.print(f"weights written to {escape(str(out))}")


@click.command("fit-tables")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="training image folder (repeatable); never the evaluation set")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output .safetensors")
@click.option("--crops", default=48, show_default=True, type=click.IntRange(2, 10_000), help="training crops coded")
@click.option("--crop", default=384, show_default=True, help="crop size, a multiple of 64")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 5),
              help="count, fit, and count again with the fitted tables (RDOQ prices its choices with them)")
@click.option("--seed", default=7, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0: one per core)")
@click.option("--effort", type=click.IntRange(min(EFFORTS), max(EFFORTS)), default=None,
              help="the encoder effort whose symbols the tables are fitted to [default: the package's "
                   "default effort, 1]")
def fit_tables(weights: Path, data, out: Path, crops: int, crop: int, rounds: int, seed: int, threads: int,
               effort: int | None) -> None:
    """Fit WEIGHTS' y CDF tables to the symbols the encoder writes on training crops (the step
    before register-model; the decoder is unchanged, only the tables' contents)."""
    import torch

    from ..codec.default import DEFAULT_EFFORT
    from ..table_fit import fit_weights_file

    if crop % 64:
        raise click.UsageError("--crop must be a multiple of 64")
    if threads > 0:
        torch.set_num_threads(threads)
    eff = DEFAULT_EFFORT if effort is None else effort
    with _progress() as prog:
        task = prog.add_task("coding crops", total=None, info="")

        def cb(r: int, done: int, total: int) -> None:
            prog.update(task, completed=done, total=total, info=f"round {r}/{rounds}")

        try:
            fit = fit_weights_file(weights, out, list(data), crops=crops, crop=crop, effort=eff, rounds=rounds,
                                   seed=seed, progress=cb)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    console.print(f"{fit.symbols:,} symbols (effort {eff}): {fit.change_pct:+.2f} % bits against the Gaussian "
                  f"tables; held out (fitted on half the crops, priced on the other half) {fit.heldout_pct:+.2f} %")
    console.print(f"weights written to {escape(str(out))}")


@click.command("eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--qualities", default="0,14,28,42,56,70,85,100", show_default=True, help="comma-separated")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("rd.json"), show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="RD plot PNG")
@click.option("--anchor", "anchors", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="anchor JSON for BD-rate (repeatable)")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="reference curve (e.g. VTM) for BD-rate")
@click.option("--limit", type=int, default=None, help="only the first N images")
@click.option("--effort", type=click.IntRange(min(EFFORTS), max(EFFORTS)), default=0, show_default=True,
              help="encoder effort of every point")
def evaluate(folder, model, device, qualities, out, plot, anchors, reference, limit, effort) -> None:
    """RD curve on FOLDER from real bitstreams, with BD-rates against anchors."""
    from ..codec import Codec
    from ..codec.registry import DEFAULT_MODEL
    from ..evaluate import bd_table, evaluate_folder, plot_rd, write_result

    from .runtime import settings

    try:
        codec = Codec.load(model or DEFAULT_MODEL, device, settings=settings())
    except ArchiverError as e:
        fail(e)
    qs = [float(v) for v in qualities.split(",")]
    ticker = _ticker()
    with _progress() as prog:
        task = prog.add_task("evaluating", total=None, info="")

        def on_image(i: int, n: int) -> None:
            prog.update(task, completed=i, total=n)
            if ticker.due():
                console.print(f"evaluating: image {i}/{n}", highlight=False)

        result = evaluate_folder(codec, folder, qs, limit, on_image, effort=effort)
    rows = bd_table(result, list(anchors), reference)
    result["bd_rate"] = rows
    write_result(result, out)
    t = Table("quality", "bpp", "PSNR-RGB", "MS-SSIM", "enc s", "dec s", title=result["name"])
    r = result["results"]
    for i, q in enumerate(qs):
        t.add_row(f"{q:g}", f"{r['bpp'][i]:.4f}", f"{r['psnr-rgb'][i]:.2f}", f"{r['ms-ssim-rgb'][i]:.4f}",
                  f"{r['encoding_time'][i]:.2f}", f"{r['decoding_time'][i]:.2f}")
    table_console().print(t)
    if rows:
        bt = Table("anchor", "BD-rate of ours vs anchor (%)")
        for row in rows:
            v = row["ours_vs_anchor_pct"]
            bt.add_row(row["anchor"], "n/a: " + row.get("note", "") if v is None else f"{v:+.2f}")
        table_console().print(bt)
    if plot:
        plot_rd(result, list(anchors) + ([reference] if reference else []), plot)
    console.print(f"results written to {escape(str(out))}")


@click.command("register-model")
@click.argument("model_id")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scale-rule", type=click.Choice(["up", "nearest"]), default="nearest", show_default=True,
              help="how scales pick a table entry (part of the bitstream format; nearest costs less rate)")
@click.option("--note", default="", help="free text kept in the registry (how it was trained)")
@click.option("--steps", "trained_steps", type=int, default=None, help="training steps, kept in the registry")
def register_model(model_id: str, weights: Path, scale_rule: str, note: str, trained_steps: int | None) -> None:
    """Ship trained WEIGHTS under a new MODEL_ID (copied into the package, sha256 recorded).

    Afterwards: write its golden bitstreams (tests/make_golden.py MODEL_ID) and, to make it the
    default, set DEFAULT_MODEL (archiver/codec/default.py) and model_id in config/archiver.toml."""
    from ..codec.registry import register_weights

    info: dict = {"note": note} if note else {}
    if trained_steps is not None:
        info["trained_steps"] = trained_steps
    try:
        entry = register_weights(model_id, weights, scale_rule=scale_rule, info=info)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"registered {entry.model_id}: {entry.file.name} sha256 {entry.sha256[:16]}… "
                  f"({entry.preset.scale_rule} scale rule)")


@click.command("models")
@click.option("--verify", is_flag=True, help="re-hash every weights file against its recorded sha256")
@click.option("--db", "db_url", default=None,
              help="also count the stored containers that need each model (SQLAlchemy URL of the ledger)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models(verify: bool, db_url: str | None, as_json: bool) -> None:
    """The models this installation can decode: the package's, and those published in the model
    store (model_store); exit status 1 if a weights file is damaged or the ledger (--db) names a
    model that is neither installed nor in the store (its containers cannot be decoded here)."""
    from ..codec.registry import describe_models
    from ..model_store import ModelStore
    from .runtime import settings

    rows = describe_models(verify=verify)
    for r in rows:
        r["origin"] = "package"
    try:
        store = ModelStore.from_settings(settings())
        if store is not None:  # models published by `archiver finetune`, beside the packaged ones
            rows += store.describe(verify=verify)
    except ArchiverError as e:
        fail(e)
    installed = {r["model_id"] for r in rows}
    needed: dict[str, int] | None = None
    if db_url:
        from ..db.ledger import containers_by_model
        from ..db.session import require_schema, session_factory

        require_schema(db_url)
        factory = session_factory(db_url)
        with factory() as session:
            needed = containers_by_model(session)
        factory.kw["bind"].dispose()
        for r in rows:
            r["containers"] = needed.get(r["model_id"], 0)
    missing = {m: n for m, n in (needed or {}).items() if m not in installed}
    damaged = [r["model_id"] for r in rows if r["intact"] is False]
    if as_json:
        click.echo(json.dumps({"models": rows, "missing_models": missing}, indent=2))
    else:
        t = Table("model", "from", "default", "steps", "scale rule", "size", "sha256", *(["intact"] if verify else []),
                  *(["containers"] if needed is not None else []), "note", title="installed models")
        for r in rows:
            t.add_row(r["model_id"], r["origin"], "yes" if r["default"] else "", str(r["trained_steps"] or "-"),
                      r["scale_rule"],
                      f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] is not None else "MISSING", r["sha256"][:12],
                      *(["yes" if r["intact"] else "NO"] if verify else []),
                      *([f"{r['containers']:,}"] if needed is not None else []), escape(r["note"]))
        table_console().print(t)
        for m, n in sorted(missing.items()):
            console.print(f"[red]model {escape(m)} is not installed nor in the model store[/red]: {n:,} stored "
                          "container(s) need it")
        for m in damaged:
            console.print(f"[red]model {escape(m)}: weights file missing or not matching its sha256[/red]")
    if missing or damaged:
        raise SystemExit(1)


@click.command("finetune")
@click.argument("source")
@click.option("--name", "new_id", required=True, help="id of the new model (never an existing one)")
@click.option("--from", "base_model", default=None, help="model to start from [settings: model_id]")
@click.option("--sample", default=40, show_default=True, type=click.IntRange(2), help="objects sampled from SOURCE")
@click.option("--holdout", default=0.2, show_default=True, type=click.FloatRange(0.01, 0.9),
              help="fraction of the sample held out of training and measured on")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.01), help="training budget (wall clock)")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="register the new model even if it is not better")
@click.option("--qualities", default="30,50,70,90", show_default=True, help="RD points measured (comma-separated)")
@click.option("--eval-size", default=512, show_default=True, type=click.IntRange(0),
              help="measure on a centre crop of each held-out image, at most this many px a side (0: whole images)")
@click.option("--crop", default=128, show_default=True, help="training crop size, a multiple of 64")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=5e-5, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--threads", default=None, type=click.IntRange(0), help="torch CPU threads [settings: torch_threads]")
@click.option("--device", default=None, help="cpu, cuda, auto [settings: device]")
@click.option("--min-psnr", type=click.FloatRange(1, 99), default=None, help="the floor measured at [settings: min_psnr]")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def finetune(source, new_id, base_model, sample, holdout, minutes, seed, force, qualities, eval_size, crop, batch, lr,
             threads, device, min_psnr, as_json) -> None:
    """Fine-tune a model on a sample of SOURCE (S3 or a directory), measure it against the base on
    held-out images from real bitstreams, and publish it in the model store if it is better.

    Exit status 0 when the new model was registered, 1 when it was measured but not better (not
    registered), 2 on an error."""
    from ..codec.api import apply_torch_threads
    from ..finetune import FinetuneConfig, finetune as run
    from ..settings import load_settings

    if crop % 64:
        raise click.UsageError("--crop must be a multiple of 64")
    try:
        qs = tuple(float(v) for v in qualities.split(","))
    except ValueError:
        raise click.UsageError("--qualities: comma-separated numbers, e.g. 30,50,70,90") from None
    if len(qs) < 2:
        raise click.UsageError("--qualities needs at least two points for a BD-rate")
    try:
        st = load_settings(min_psnr=min_psnr, device=device)
        apply_torch_threads(threads if threads is not None else st.torch_threads)
        cfg = FinetuneConfig(source_url=source, new_id=new_id, base_model=base_model or st.model_id, sample=sample,
                             holdout=holdout, minutes=minutes, seed=seed, force=force, qualities=qs,
                             eval_size=eval_size, crop=crop, batch=batch, lr=lr,
                             threads=threads if threads is not None else st.torch_threads, device=st.device,
                             min_psnr=st.min_psnr)
        ticker = _ticker()
        with _progress() as prog:
            tasks: dict[str, int] = {}

            def cb(phase: str, done: int, total: int, info: str) -> None:
                if phase not in tasks:
                    tasks[phase] = prog.add_task(phase, total=total, info="")
                prog.update(tasks[phase], completed=done, total=total, info=escape(info))
                if ticker.due() or done == total:
                    console.print(f"{phase}: {done}/{total} | {escape(info)}", highlight=False)

            res = run(cfg, st, cb)
    except ArchiverError as e:
        fail(e)
    rec = res.record
    m = rec["measured"]
    if as_json:
        click.echo(json.dumps({"model_id": res.new_id, "registered": res.registered, "reason": res.reason,
                               "record": rec}, indent=2, default=str))
    else:
        src = rec["source"]
        console.print(f"sample: {src['sample_size']} of {src['objects_listed']:,} objects (seed {src['seed']}); "
                      f"trained on {len(src['train'])}, held out {len(src['held_out'])}; "
                      f"{rec['training']['steps']} steps in {rec['training']['seconds']:.0f} s", highlight=False)
        t = Table("quality", f"bpp {rec['base_model']}", "PSNR", f"bpp {res.new_id}", "PSNR",
                  title=f"held-out RD points (real bitstreams, centre crops <= {m['eval_size'] or 'full'} px)")
        b, a = m["before"], m["after"]
        for i, q in enumerate(b["qualities"]):
            t.add_row(f"{q:g}", f"{b['bpp'][i]:.4f}", f"{b['psnr'][i]:.2f}", f"{a['bpp'][i]:.4f}", f"{a['psnr'][i]:.2f}")
        table_console().print(t)
        bd = m["bd_rate_pct"]
        fb, fa = b["floor"], a["floor"]
        console.print(f"BD-rate of {res.new_id} vs {rec['base_model']}: "
                      + ("n/a (" + m["bd_rate_note"] + ")" if bd is None else f"{bd:+.2f} %"), highlight=False)
        console.print(f"at the {fb['min_psnr']:g} dB floor: {fb['bytes']:,} -> {fa['bytes']:,} bytes "
                      f"({m['floor_change_pct']:+.2f} %); saving vs the originals {fb['saving_pct']:.1f} % -> "
                      f"{fa['saving_pct']:.1f} %; images reaching it {fb['reached']} -> {fa['reached']} of "
                      f"{fb['images']}", highlight=False)
        verb = "registered" if res.registered else "NOT registered"
        console.print(f"{verb} {escape(res.new_id)}: {escape(res.reason)}", highlight=False)
    if not res.registered:
        raise SystemExit(1)


COMMANDS = [encode, decode, info, train, fit_tables, evaluate, register_model, models, finetune]
