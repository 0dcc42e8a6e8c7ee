import subprocess
import sys

import numpy as np
import pytest

from kinema.cli import main
from kinema.io.video import read_video


def test_help_lists_the_pipeline_stages():
    out = subprocess.run([sys.executable, "-m", "kinema.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for stage in ("data", "vae", "dit", "generate", "eval"):
        assert stage in out.stdout


def test_data_synth_and_show(tmp_path, capsys):
    assert main(["data", "synth", "--n", "3", "--out", str(tmp_path / "d"), "--frames", "5",
                 "--size", "32x48", "--objects", "2"]) == 0
    assert main(["data", "show", str(tmp_path / "d"), "--n", "2"]) == 0
    assert (tmp_path / "d" / "contact_sheet.png").stat().st_size > 0


def test_bad_world_name_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["data", "synth", "--n", "1", "--out", str(tmp_path), "--holdout", "red"]) == 2
    assert "holdout" in capsys.readouterr().err


def test_synth_features_a_new_color_with_replay(tmp_path, capsys):
    import json

    assert main(["data", "synth", "--n", "40", "--out", str(tmp_path / "d"), "--frames", "5", "--size", "32",
                 "--featured", "pink", "--featured-share", "0.5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "d" / "captions.jsonl").read_text().splitlines()]
    assert 8 < sum("pink" in r["captions"]["medium"] for r in rows) < 32
    assert main(["data", "synth", "--n", "1", "--out", str(tmp_path / "e"), "--colors", "magenta"]) == 2
    assert "colors" in capsys.readouterr().err


def test_synth_narrows_the_world_to_the_factors_given(tmp_path, capsys):
    import json

    assert main(["data", "synth", "--n", "24", "--out", str(tmp_path / "d"), "--frames", "5", "--size", "32",
                 "--objects", "1", "--shapes", "circle", "square", "--object-sizes", "large", "--motions", "left",
                 "--speeds", "quickly", "--backgrounds", "black"]) == 0
    world = json.loads((tmp_path / "d" / "meta.json").read_text())["world"]
    assert world["shapes"] == ["circle", "square"] and world["backgrounds"] == ["black"]
    assert (world["sizes"], world["motions"], world["speeds"]) == (["large"], ["left"], ["quickly"])
    medium = [json.loads(line)["captions"]["medium"] for line in (tmp_path / "d" / "captions.jsonl").open()]
    assert all("black" in c and "triangle" not in c and "diamond" not in c for c in medium)
    assert main(["data", "synth", "--n", "1", "--out", str(tmp_path / "e"), "--shapes", "hexagon"]) == 2
    assert "shapes" in capsys.readouterr().err


def test_synth_states_the_count_when_asked(tmp_path):
    import json

    from kinema.data.captions import COUNT_WORDS, parse_caption

    assert main(["data", "synth", "--n", "6", "--out", str(tmp_path / "d"), "--frames", "5", "--size", "32",
                 "--objects", "1-3", "--state-count"]) == 0
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["world"]["state_count"] is True
    for line in (tmp_path / "d" / "captions.jsonl").open():
        medium = json.loads(line)["captions"]["medium"]
        assert medium.startswith(f"{COUNT_WORDS[len(parse_caption(medium).objects)]}: "), medium


def test_demo_writes_a_playable_mp4_and_sheet(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0  # with the bundled model when it is there
    frames = read_video(tmp_path / "shapes.mp4")
    assert frames.shape[0] == 17 and np.asarray(frames).std() > 5
    assert (tmp_path / "shapes_contact_sheet.png").exists()


def test_eval_adherence_pools_the_prompt_sets_of_several_seeds(tiny_model_dir, tmp_path, capsys):
    import json

    from kinema.eval.adherence import CATEGORIES

    assert main(["eval", "adherence", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1,2", "--steps", "1",
                 "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "adherence.json").read_text())
    assert {c: report["by_category"][c]["n"] for c in CATEGORIES} == {c: 2 for c in CATEGORIES}  # one set each
    for bad in ("1,1", "1,x", ""):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "adherence", "--seed", bad])
        assert exit_.value.code == 2 and "distinct comma-separated seeds" in capsys.readouterr().err
