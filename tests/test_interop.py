"""Diffusers interop: a kinema model folder loads through diffusers' from_pretrained and samples what kinema
samples (same seed, same Euler schedule), and kinema still reads the folder after the export."""

import json

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")


@pytest.fixture()
def exported(tiny_model_dir, tmp_path):
    import shutil

    from kinema.cli import main

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    assert main(["export", "diffusers", str(folder)]) == 0
    return folder


def test_diffusers_loads_the_folder_and_samples_what_kinema_samples(exported):
    import torch

    from kinema.interop.diffusers import KinemaPipeline
    from kinema.pipeline import TextToVideoPipeline

    pipe = KinemaPipeline.from_pretrained(exported)  # diffusers' DiffusionPipeline.from_pretrained
    assert isinstance(pipe, diffusers.DiffusionPipeline)
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    ours = TextToVideoPipeline.from_pretrained(exported)
    ours.bf16 = False
    for guidance in (1.0, 4.0):
        a = ours("a red circle moving right", steps=4, guidance=guidance, seed=3, sampler="euler")
        b = pipe("a red circle moving right", num_inference_steps=4, guidance_scale=guidance,
                 generator=torch.Generator().manual_seed(3)).frames
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.05  # float rounding only


def test_the_scheduler_config_is_diffusers_own_and_kinema_still_reads_the_folder(exported):
    from kinema.model_index import read_model_index, write_model_index

    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(exported / "scheduler")
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.shift == read_model_index(exported).objective["shift"]
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "KinemaPipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == read_model_index(exported).text_encoder  # kinema's key, untouched
    write_model_index(exported, read_model_index(exported).replace(steps=7))  # a later kinema write keeps them
    index = json.loads((exported / "model_index.json").read_text())
    assert index["steps"] == 7 and index["transformer"][1] == "KinemaTransformer"


def test_the_bundled_model_ships_the_diffusers_files():
    from kinema.generate import default_model
    from kinema.model_index import read_model_index

    folder = default_model()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "KinemaPipeline"
    for name in ("transformer", "vae", "text_model"):
        assert (folder / name / "config.json").exists()
    assert (folder / "scheduler" / "scheduler_config.json").exists()
    read_model_index(folder)


def test_an_epsilon_model_is_refused_with_the_reason(exported, capsys):
    from kinema.cli import main
    from kinema.config import to_dict
    from kinema.diffusion.objectives import EpsilonObjective

    path = exported / "model_index.json"
    index = json.loads(path.read_text())
    index["objective"] = to_dict(EpsilonObjective())
    path.write_text(json.dumps(index))
    assert main(["export", "diffusers", str(exported)]) == 2
    assert "flow-matching" in capsys.readouterr().err


def test_an_x0_prediction_model_samples_in_diffusers_what_kinema_samples(tiny_model_dir, tmp_path):
    """diffusers' Euler scheduler takes the transformer's output for a velocity: an x0 model's is converted."""
    import shutil

    import torch

    from kinema.cli import main
    from kinema.interop.diffusers import KinemaPipeline
    from kinema.pipeline import TextToVideoPipeline

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["objective"]["prediction"] = "x0"
    (folder / "model_index.json").write_text(json.dumps(index))
    assert main(["export", "diffusers", str(folder)]) == 0
    assert json.loads((folder / "transformer" / "config.json").read_text())["prediction"] == "x0"
    ours = TextToVideoPipeline.from_pretrained(folder)
    ours.bf16 = False
    a = ours("a red circle moving right", steps=4, guidance=4.0, seed=3, sampler="euler")
    b = KinemaPipeline.from_pretrained(folder)("a red circle moving right", num_inference_steps=4, guidance_scale=4.0,
                                               generator=torch.Generator().manual_seed(3)).frames
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.05  # float rounding only
    velocity = TextToVideoPipeline.from_pretrained(tiny_model_dir)
    velocity.bf16 = False
    assert not np.array_equal(a, velocity("a red circle moving right", steps=4, guidance=4.0, seed=3))
