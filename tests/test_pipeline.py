import numpy as np
import pytest

from kinema.cli import main
from kinema.io.video import read_video
from kinema.pipeline import FrameCondition, TextToVideoPipeline


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return TextToVideoPipeline.from_pretrained(tiny_model_dir)


def test_same_seed_same_video_and_other_seed_differs(pipe):
    a = pipe("a red circle moving left", steps=3, seed=1)
    b = pipe("a red circle moving left", steps=3, seed=1)
    c = pipe("a red circle moving left", steps=3, seed=2)
    assert a.dtype == np.uint8 and a.shape == (5, 32, 32, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_other_sizes_and_durations(pipe):
    assert pipe("a blue square", frames=9, height=32, width=48, steps=2).shape == (9, 32, 48, 3)
    assert pipe("a blue square", frames=1, steps=2).shape == (1, 32, 32, 3)  # an image


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 6}, r"frames must be 1 \+ 4\*k"),
    ({"height": 36}, "multiples of 8"),
    ({"steps": -1}, "steps must be >= 1"),
    ({"guidance": -2.0}, "guidance must be >= 0"),
    ({"sampler": "ddim"}, "does not fit this flow model"),
])
def test_bad_arguments_give_clear_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a red circle", **kwargs)


def test_an_objective_that_differs_from_the_index_is_refused(pipe):
    from kinema.diffusion.objectives import EpsilonObjective

    with pytest.raises(ValueError, match="differs from the model index"):
        TextToVideoPipeline(pipe.dit, pipe.vae, pipe.text_encoder, EpsilonObjective(), pipe.index)


def test_empty_prompt_is_refused(pipe):
    with pytest.raises(ValueError, match="non-empty"):
        pipe("   ")


def test_edit_strength_zero_returns_the_input_reconstruction(pipe):
    source = pipe("a red circle", steps=2, seed=0)
    edited = pipe("a blue square", steps=4, condition=FrameCondition(source, [], strength=0.0))
    import torch

    from kinema.io.video import to_frames, to_tensor
    with torch.no_grad(), pipe._autocast():
        recon = to_frames(pipe.vae.decode(pipe.vae.encode(to_tensor(source)[None]).float())[0].float())
    assert np.array_equal(edited, recon)


def test_frame_condition_indices_are_checked(pipe):
    frame = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the clip"):
        pipe("a red circle", steps=2, condition=FrameCondition(frame, [7]))


def test_generate_cli_writes_mp4_gif_and_trajectory(tiny_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(tiny_model_dir), "-o", str(out),
                 "--steps", "3", "--gif", "--show-steps"]) == 0
    assert read_video(out).shape == (5, 32, 32, 3)
    assert (tmp_path / "v.gif").exists() and (tmp_path / "v_steps.png").exists()


def test_generate_cli_image_to_video(tiny_model_dir, tmp_path):
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(tmp_path / "first.png")
    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "-o", str(tmp_path / "i2v.mp4"),
                 "--steps", "2", "--image", str(tmp_path / "first.png")]) == 0
    assert main(["generate", "x", "--model", str(tiny_model_dir), "-o", str(tmp_path / "bad.mp4"),
                 "--image", "a.png", "--edit", "b.mp4"]) == 2
