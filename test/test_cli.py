"""The `sgdfuse` command fuses files and folders without ROS."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from sgdfuse_ros.cli import main

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"


def test_fuse_one_pair_and_a_folder(tmp_path, capsys):
    out = tmp_path / "one.png"
    assert (
        main(
            [
                "fuse",
                "--thermal",
                str(PAIRS / "ir/FLIR_06307.jpg"),
                "--rgb",
                str(PAIRS / "vi/FLIR_06307.jpg"),
                "--out",
                str(out),
                "--timings",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    fused = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert fused.shape == cv2.imread(str(PAIRS / "vi/FLIR_06307.jpg")).shape
    assert json.loads((tmp_path / "t.json").read_text())[0]["total"] > 0

    folder = tmp_path / "folder"
    subset = tmp_path / "subset"
    for sub in ("ir", "vi"):
        (subset / sub).mkdir(parents=True)
        for stem in ("FLIR_04269", "FLIR_08835"):
            (subset / sub / f"{stem}.jpg").write_bytes((PAIRS / sub / f"{stem}.jpg").read_bytes())
    assert main(["fuse", "--pairs", str(subset), "--out", str(folder), "--save-intermediate"]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == ["FLIR_04269.png", "FLIR_08835.png"]
    assert (folder / "mask_ir" / "FLIR_04269.png").is_file() and (folder / "preliminary" / "FLIR_08835.png").is_file()
    assert "prior: fallback" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["fuse", "--pairs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "must contain ir/ and vi/" in capsys.readouterr().err
    assert (
        main(["fuse", "--thermal", "a.png", "--rgb", "b.png", "--out", "x.png", "--set", "thermal.scaling=minmax"]) == 2
    )
    assert "thermal.scaling" in capsys.readouterr().err
