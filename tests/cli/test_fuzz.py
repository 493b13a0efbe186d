"""The CLI driven with random option values and random bytes as input files (hypothesis,
a fixed number of examples, derandomised): no traceback ever reaches the user, exit codes
are 0, 1 or 2 as documented, and the catalogue passes PRAGMA integrity_check after each."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from datatool.analysis.consensus import make_consensus
from datatool.cli import app
from datatool.core.workspace import init_workspace, open_workspace
from datatool.labels.annotations import reserved_kind
from datatool.learning.splits import create_split
from tests.labels_util import ingest_demo_with_labels

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(demo_dir, tmp_path_factory):
    """A workspace with the demo study, two raters' labels, a consensus and a split, and a
    few real files to mutate."""
    base = tmp_path_factory.mktemp("fuzz")
    root = init_workspace(base / "ws").root
    ws = open_workspace(root)
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "staple")
    create_split(ws, "s", folds=2)
    ws.close()
    samples = {
        "dicom": sorted((demo_dir / "dicom").rglob("*.dcm"))[0].read_bytes(),
        "label": sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[0].read_bytes(),
        "csv": (demo_dir / "clinical.csv").read_bytes(),
        "json": b'[{"id": 1, "data": {"sop": "1.2.3"}, "annotations": [{"result": []}]}]',
    }
    return root, base, samples


names = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=12,
)
numbers = st.one_of(
    st.integers(-3, 20),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["nan", "inf", "-1", "0", "1e9", "x", "", "2:1:1", "6:2:2", "nan:1:1"]),
).map(str)
words = st.one_of(
    names,
    st.sampled_from(["rater1", "rater2", "consensus:staple", "model:1", "s", "[red]x", ":skull:"]),
)

# raters only datatool's own commands write: a sync or export naming one exits 2
reserved = st.sampled_from(["consensus:staple", "model:1", "consensus:x", "MODEL:7"])
WRITES_LABELS = ("sync", "export", "prelabel")


SAMPLES: dict[str, bytes] = {}  # real files to mutate, set by the fixture


@st.composite
def content(draw) -> bytes:
    """Random bytes, or a real file cut short or with bytes overwritten."""
    kind = draw(st.sampled_from(["random", "dicom", "label", "csv", "json"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(SAMPLES[kind])
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


def often(*valid: str, other=None):
    """One of ``valid`` most of the time, else anything ``other`` (default: numbers) draws."""
    return st.one_of(st.sampled_from(valid), other if other is not None else numbers)


def _commands(draw, path: str, folder: str, out: str) -> dict:
    """Builders of each command line; only the chosen one draws its options."""
    opt = draw
    rater = often("rater1", "rater2", other=st.one_of(words, reserved))
    return {
        "ingest": lambda: ["ingest", opt(st.sampled_from([path, folder])), "-j",
                           opt(often("0", "1")), "--frames", opt(often("auto", "all", "first")),
                           "--batch", opt(often("64", "1", "2")),
                           *opt(st.sampled_from([[], ["--allow-burned-in"]]))],
        "ingest-clinical": lambda: ["ingest-clinical", path],
        "sync itksnap": lambda: ["sync", "itksnap", folder, "--rater", opt(rater),
                                 *opt(st.sampled_from([[], ["--allow-empty"]]))],
        "sync labelstudio": lambda: ["sync", "labelstudio", "--rater", opt(rater),
                                     "--export", path],
        "images": lambda: ["images", "--limit", opt(often("5", "1")), "--side",
                           opt(often("L", "R", other=words)), "--patient", opt(words)],
        "agreement": lambda: ["agreement", "--sample", opt(often("8", "12", "3")),
                              "--seed", opt(often("0", "7")),
                              "--raters", opt(often("rater1,rater2", "rater2,rater1", other=words)),
                              "--out", out],
        "split create": lambda: ["split", "create", opt(often("a", "b.1", other=words)),
                                 "--ratios", opt(often("6:2:2", "1:1:1", "2:0:1")),
                                 "--folds", opt(often("0", "2")), "--seed", opt(often("0", "5"))],
        "split check": lambda: ["split", "check", opt(often("s", other=words))],
        "split export": lambda: ["split", "export", opt(often("s", other=words)), "--out", out,
                                 "--format", opt(often("csv", "nnunet", other=words))],
        "rater add": lambda: ["rater", "add", opt(words)],
        "labels": lambda: ["labels", "--rater", opt(rater)],
        "status": lambda: ["status", "--csv", out],
        "cohort": lambda: ["cohort", "--csv", path],
        "consensus": lambda: ["consensus", "--method",
                              opt(often("staple", "majority", other=words))],
        "export itksnap": lambda: ["export", "itksnap", "--rater", opt(rater), "--out", out,
                                   "--images", opt(often("1", "2,3", "img000004", other=words)),
                                   *opt(st.sampled_from([[], ["--gold", "2"],
                                                         ["--gold", "1", "--gold-reference",
                                                          "rater2"]]))],
        "export dicom-seg": lambda: ["export", "dicom-seg", "--rater",
                                     opt(often("rater1", "consensus:staple", other=words)),
                                     "--dicom-root", folder, "--out", out,
                                     *opt(st.sampled_from([[], ["--images", "1,2"]]))],
        "raters": lambda: ["raters", "--rater", opt(rater)],
        "init": lambda: ["init", out],
    }  # fmt: skip


COMMANDS = list(_commands(lambda s: None, "", "", ""))


SURROGATE_NAMES: set[str] = set()


def _not_utf8(raw: bytes) -> str:
    """A file name whose bytes are not valid UTF-8, as Python holds it (surrogate escapes)."""
    name = os.fsdecode(b"\xff" + raw)
    SURROGATE_NAMES.add(name)
    return name


not_utf8_names = st.builds(
    lambda raw, ext: _not_utf8(raw + ext),
    st.binary(max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b),
    st.sampled_from([b"", b".dcm", b"\xe9.dcm", b".nii.gz"]),
)


@st.composite
def invocation(draw) -> tuple[list[str], str, bytes]:
    """(command line, input file name, its bytes): the file is written by the test into a
    fresh folder whose path the command line names as {FOLDER}."""
    name = draw(
        st.one_of(
            st.sampled_from(["img000001_seg.nii.gz", "img000002_seg.nrrd", "DICOMDIR", "a.dcm"]),
            names.filter(lambda n: n not in (".", "..")).map(
                lambda n: n + draw(st.sampled_from(["", ".dcm", ".nii.gz", ".json", ".mha"]))
            ),
            not_utf8_names,
        )
    )
    data = draw(content())
    out = "{FOLDER}/out/" + draw(names.filter(lambda n: n not in (".", "..")))
    command = draw(st.sampled_from(COMMANDS))
    # sync itksnap on such a name is another fix's (a C++ abort in the NIfTI reader, issue 20)
    assume(command != "sync itksnap" or name not in SURROGATE_NAMES)
    args = _commands(draw, "{FOLDER}/" + name, "{FOLDER}", out)[command]()
    return args, name, data


def _integrity(root: Path) -> str:
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    try:
        return con.execute("pragma integrity_check").fetchone()[0]
    finally:
        con.close()


def _run_and_check(args: list[str], root: Path) -> None:
    """Run one command line: no exception but SystemExit, no traceback shown, exit code 0, 1
    or 2, and the workspace's catalogue intact afterwards."""
    res = runner.invoke(app, args)
    shown = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        args,
        repr(res.exception),
        shown,
    )
    assert "Traceback" not in shown, (args, shown)
    assert res.exit_code in (0, 1, 2), (args, res.exit_code, shown)
    named = args[args.index("--rater") + 1] if "--rater" in args else ""
    reads_only = args[:2] == ["export", "dicom-seg"]  # writes out any rater's labels
    if args[0] in WRITES_LABELS and not reads_only and reserved_kind(named) is not None:
        assert res.exit_code == 2, (args, shown)
    assert _integrity(root) == "ok"


def test_random_command_lines_never_show_a_traceback(prepared):
    root, base, samples = prepared
    SAMPLES.update(samples)
    runs = iter(range(10**9))

    @settings(
        max_examples=80,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=invocation())
    def one(case: tuple[list[str], str, bytes]) -> None:
        template, name, data = case
        folder = base / f"case{next(runs)}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        args = [a.replace("{FOLDER}", str(folder)) for a in template]
        if args[0] != "init":
            args += ["--workspace", str(root)]
        _run_and_check(args, root)

    one()
    assert SURROGATE_NAMES, "no example drew a name that is not valid UTF-8"


@pytest.fixture(scope="module")
def trained_copy(trained, tmp_path_factory):
    """A copy of the session's trained workspace (run 1, split ``s``) for the model's commands."""
    from tests.qa_util import clone

    workspace, run = trained
    base = tmp_path_factory.mktemp("fuzz-model")
    clone(workspace, base / "ws")
    return base / "ws", base, run


def _model_commands(draw, path: str, out: str, run: str) -> dict:
    """The commands that load or train the model; options that would make a valid run long
    (epochs, cross-validation) draw only short or invalid values."""
    opt = draw
    rater = often("rater1", "rater2", other=words)
    runs = often(run, other=numbers)
    device = often("cpu", other=words)
    return {
        "train": lambda: ["train", "--split", opt(often("s", other=words)),
                          "--preset", opt(often("tiny", other=words)),
                          "--epochs", opt(often("1", other=st.sampled_from(
                              ["0", "-1", "nan", "x", "", str(2**70)]))),
                          "--batch", opt(often("4", "1")), "--lr", opt(often("0.01")),
                          "--seed", opt(often("0")), "--device", opt(device),
                          *opt(st.sampled_from([[], ["--loss", opt(often("ce", other=words))],
                                                ["--output-stride", opt(often("8", "16"))],
                                                ["--fold", opt(numbers)],
                                                ["--pretrained", path],
                                                ["--resume", opt(runs)]]))],
        "score": lambda: ["score", opt(runs), "--set", opt(often("test", "val", other=words)),
                          "--checkpoint", opt(often("best", "last", other=words)),
                          "--device", opt(device), "--out", out,
                          *opt(st.sampled_from([[], ["--fold", opt(numbers)], ["--no-store"]]))],
        "qa": lambda: ["qa", "--run", opt(runs), "--device", opt(device),
                       "--model-dice-below", opt(often("0.5")),
                       "--size-z-above", opt(often("3.5")),
                       *opt(st.sampled_from([[], ["--rater", opt(rater)]]))],
        "qa list": lambda: ["qa", "list", "--limit", opt(often("5"))],
        "report": lambda: ["report", "--run", opt(runs), "--split", opt(often("s", other=words)),
                           "--out", out + ".html", "--format", opt(often("html", "md",
                                                                         other=words))],
        "next": lambda: ["next", "--rater", opt(rater), "--n", opt(often("5")),
                         "--run", opt(runs), "--per-patient", opt(often("2")),
                         "--device", opt(device)],
        "prelabel": lambda: ["prelabel", opt(runs), "--rater", opt(rater),
                             "--batch", opt(often("8")), "--device", opt(device),
                             "--url", "http://127.0.0.1:9", "--token", "x"],
    }  # fmt: skip


MODEL_COMMANDS = list(_model_commands(lambda s: None, "", "", ""))


@st.composite
def model_invocation(draw, run: str) -> tuple[list[str], bytes]:
    """(command line, bytes of the file it may name as {FOLDER}/input.pt)."""
    data = draw(st.one_of(st.binary(max_size=512), st.just(b"")))
    out = "{FOLDER}/out/" + draw(names.filter(lambda n: n not in (".", "..")))
    command = draw(st.sampled_from(MODEL_COMMANDS))
    return _model_commands(draw, "{FOLDER}/input.pt", out, run)[command](), data


def test_random_model_command_lines_never_show_a_traceback(trained_copy):
    """The same, for the commands that train, score and run the model (train, score, qa,
    report, next, prelabel; serve runs until stopped and has its own exit-code tests)."""
    root, base, run = trained_copy
    runs = iter(range(10**9))

    @settings(
        max_examples=30,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=model_invocation(str(run)))
    def one(case: tuple[list[str], bytes]) -> None:
        template, data = case
        folder = base / f"case{next(runs)}"
        folder.mkdir()
        (folder / "input.pt").write_bytes(data)
        args = [a.replace("{FOLDER}", str(folder)) for a in template]
        _run_and_check([*args, "--workspace", str(root)], root)

    one()
