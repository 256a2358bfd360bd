"""The needle and thread masks of the procedural data, and the autoencoder's scores on them."""

import json
import shutil

import numpy as np
import pytest
import torch

from survgen.data.datasets import FrameDataset, cue_mask
from survgen.data.index import DatasetError, build_index
from survgen.data.synth import cue_mask_path
from survgen.data.video import probe_video, read_frames
from survgen.training.autoencoder import cue_l1, evaluation_frames, psnr, reconstruction_psnr


def _videos(root):
    return sorted(root.glob("video_*/video_left.avi"))


def test_every_video_has_one_mask_per_frame_on_the_needle_and_thread(synth_dataset):
    cue_blue, rest_blue = [], []
    for video in _videos(synth_dataset):
        masks = np.load(cue_mask_path(video))["masks"]
        info = probe_video(video)
        assert masks.dtype == bool and masks.shape == (info.num_frames, info.height, info.width)
        assert 0.005 < masks.mean() < 0.1  # a few per cent of each video: thin strokes
        frames = read_frames(video, list(range(0, info.num_frames, 7)), None).astype(np.float32)
        chosen = masks[::7]
        # Needle (grey-white) and thread (blue/green) against pink tissue: less red than blue/green.
        tint = frames[..., 1:].max(-1) - frames[..., 0]
        cue_blue.append(tint[chosen].mean())
        rest_blue.append(tint[~chosen].mean())
    assert np.mean(cue_blue) > np.mean(rest_blue) + 40


def test_frame_dataset_gives_the_masks_resized_and_zeros_without_them(synth_dataset, tmp_path):
    index = build_index(synth_dataset, clip_length=16, clip_fps=10)
    full = FrameDataset(index, size=64, cue_masks=True)
    item = full[5]
    assert item["cue_mask"].shape == (1, 64, 64) and item["cue_mask"].sum() > 0
    video, frame = full.videos[int(full.video_numbers[5])], int(full.frame_numbers[5])
    stored = torch.from_numpy(np.load(cue_mask_path(video))["masks"][frame]).float()
    assert torch.equal(item["cue_mask"][0], stored)
    half = FrameDataset(index, size=32, cue_masks=True)[5]["cue_mask"]
    assert half.shape == (1, 32, 32) and 0 < half.sum() < item["cue_mask"].sum()
    assert "cue_mask" not in FrameDataset(index, size=64)[5]

    plain = tmp_path / "plain"
    shutil.copytree(synth_dataset, plain)
    for path in plain.glob("video_*/*.cue_masks.npz"):
        path.unlink()
    bare = FrameDataset(build_index(plain, clip_length=16, clip_fps=10), size=64, cue_masks=True)[5]
    assert bare["cue_mask"].shape == (1, 64, 64) and bare["cue_mask"].sum() == 0


def test_masks_of_another_video_version_are_refused_naming_the_file(tmp_path):
    video = tmp_path / "video_left.avi"
    np.savez_compressed(cue_mask_path(video), masks=np.zeros((3, 8, 8), bool))
    with pytest.raises(DatasetError, match="cue_masks.npz: holds 3 frames"):
        cue_mask(video, 10, (8, 8))
    broken = tmp_path / "other.avi"
    cue_mask_path(broken).write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="other.cue_masks.npz: cannot read"):
        cue_mask(broken, 0, (8, 8))


def test_cue_l1_and_psnr():
    pixels = torch.zeros(2, 3, 4, 4)
    recon = pixels.clone()
    recon[0, :, 0, 0] = 1.0
    mask = torch.zeros(2, 1, 4, 4)
    assert cue_l1(recon, pixels, mask) == 0  # nothing masked: no term, no division by zero
    mask[0, 0, 0, 0] = mask[1, 0, 3, 3] = 1
    assert cue_l1(recon, pixels, mask).item() == pytest.approx(0.5)  # one of the two masked pixels is off by 1
    assert psnr(0.0, 0) is None
    assert psnr(4.0, 1) == pytest.approx(0.0)  # an error the size of the whole range
    assert psnr(4.0, 100) == pytest.approx(20.0)


class _BlurOnCues:
    """A stand-in VAE that reconstructs perfectly except on the given pixels, where it paints grey."""

    def __init__(self, dataset):
        self.dataset, self.batches = dataset, []

    def encode(self, pixels):
        class Dist:
            latent_dist = type("D", (), {"mode": lambda _: pixels})()
        return Dist()

    def decode(self, latents):
        masks = torch.stack([self.dataset[i]["cue_mask"] for i in self.batches.pop(0)])
        return type("Out", (), {"sample": latents * (1 - masks)})()


def test_reconstruction_psnr_finds_a_vae_that_drops_the_needle_and_thread(synth_dataset):
    dataset = FrameDataset(build_index(synth_dataset, clip_length=16, clip_fps=10), size=64, cue_masks=True)
    items = evaluation_frames(dataset, per_class=3)
    assert len(items) == 3 * len(set(dataset.class_ids.tolist()))
    vae = _BlurOnCues(dataset)
    vae.batches = [items[k:k + 32] for k in range(0, len(items), 32)]
    scores = reconstruction_psnr(vae, dataset, items)
    assert scores["frames"] == len(items) and set(scores["per_class"]) == {f"G{c}" for c in range(8)}
    assert scores["cue_psnr_db"] < 15 < 25 < scores["psnr_db"]  # whole frames look fine; the cues are gone
    assert all(s["frames"] == 3 for s in scores["per_class"].values())


def test_train_vae_scores_its_reconstructions_per_class(cli_vae):
    history = json.loads((cli_vae / "reconstruction.json").read_text())
    assert [r["step"] for r in history] == [3]
    last = history[-1]
    assert last["frames"] == 16 and last["cue_psnr_db"] is not None
    assert last["psnr_db"] > last["cue_psnr_db"]  # an untrained VAE blurs thin strokes worst
    assert set(last["per_class"]) == {f"G{c}" for c in range(8)}


@pytest.fixture(scope="module")
def cli_vae(synth_dataset, tmp_path_factory):
    from typer.testing import CliRunner

    from survgen.cli.main import app

    out = tmp_path_factory.mktemp("cue") / "vae"
    result = CliRunner().invoke(app, ["train-vae", "--data", str(synth_dataset), "--out", str(out), "--steps", "3",
                                      "--batch-size", "4", "--sample-every", "3", "--score-frames", "2",
                                      "--workers", "0", "--cue-weight", "2", "--latent-channels", "8"])
    assert result.exit_code == 0, result.output
    assert "needle and thread pixels" in result.output
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["latent_channels"] == 8
    return out
