"""Split commands: create, show, check, export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from datatool.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    err,
    guarded,
    out,
    print_json,
    split_app,
    workspace,
)


def _print_split(info: dict) -> None:
    out.print(
        f"split {info['name']}: hash {info['hash']}, seed {info['seed']}, ratios "
        f"{info['ratios']}, {info['folds']} folds, stratified by "
        f"{info['stratify'] or 'nothing'}, reference labels {info['reference'] or '-'}, "
        f"created {info['created']}"
    )
    table = Table()
    for col in (
        "set",
        "patients",
        "images",
        "share",
        "female",
        "male",
        "left",
        "right",
        "with reference",
    ):
        table.add_column(col, justify="left" if col == "set" else "right")
    rows = [(k, v) for k, v in info["subsets"].items()]
    rows += [(f"fold {k}", v) for k, v in info["fold_sizes"].items()]
    for name, v in rows:
        share = f"{100 * v['share']:.1f} %" if "share" in v else ""
        table.add_row(
            name,
            str(v["patients"]),
            str(v["images"]),
            share,
            str(v["female"]),
            str(v["male"]),
            str(v["left_images"]),
            str(v["right_images"]),
            str(v["with_reference"]),
        )
    out.print(table)


@split_app.command("create")
@guarded
def split_create(
    name: str = typer.Argument(..., help="Name of the new split (never reused)."),
    ratios: str = typer.Option("6:2:2", help="train:val:test shares, in images."),
    folds: int = typer.Option(5, help="Cross-validation folds of the non-test patients (0: none)."),
    seed: int = typer.Option(0, help="Seed: the same catalogue and seed give the same split."),
    stratify: str | None = typer.Option(
        None, help="Balance sets by patient sex or by the sides a patient has: sex or side."
    ),
    reference: str | None = typer.Option(
        None, help="Rater whose labels are the reference (default: the newest consensus)."
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Assign whole patients to train/val/test (and folds) and freeze it with a content hash."""
    from datatool.learning.splits import create_split

    info = create_split(
        workspace(ws_path),
        name,
        ratios=ratios,
        folds=folds,
        seed=seed,
        stratify=stratify,
        reference=reference,
    )
    print_json(info) if json_out else _print_split(info)


@split_app.command("show")
@guarded
def split_show(name: str, json_out: bool = JsonOpt, ws_path: Path | None = WorkspaceOpt):
    """Patients and images per set and fold, with sex and side balance."""
    from datatool.learning.splits import show_split

    info = show_split(workspace(ws_path), name)
    print_json(info) if json_out else _print_split(info)


@split_app.command("check")
@guarded
def split_check(name: str, json_out: bool = JsonOpt, ws_path: Path | None = WorkspaceOpt):
    """No patient in two sets or folds, every image with a reference label, hash intact.
    Exit code 1 when a problem is found."""
    from datatool.learning.splits import check_split

    result = check_split(workspace(ws_path), name)
    if json_out:
        print_json(result)
    else:
        for p in result["problems"]:
            err.print(f"[red]problem:[/red] {p}", highlight=False, soft_wrap=True)
        for n in result["notes"]:
            out.print(f"note: {n}")
        if result["ok"]:
            out.print(
                f"split {name}: {result['images']} images, no leakage, every image has "
                "a reference label, hash intact"
            )
    raise typer.Exit(0 if result["ok"] else 1)


@split_app.command("export")
@guarded
def split_export(
    name: str,
    fmt: str = typer.Option(
        "nnunet", "--format", help="nnunet (dataset.json, splits_final.json) or csv (manifest)."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Write the split for training elsewhere: an nnU-Net v2 dataset folder or a CSV manifest,
    with the images and their reference labels as PNG."""
    from datatool.learning.splits import export_split

    result = export_split(workspace(ws_path), name, fmt, out_dir)
    if json_out:
        print_json(result)
    else:
        out.print(
            f"wrote {result['images']} images ({result['test']} test) of split {name} "
            f"as {fmt} to {result['out_dir']}"
        )
