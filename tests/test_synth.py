"""The procedural dataset: deterministic, SAR-RARP50 layout, imbalanced, classes that differ in motion."""

import numpy as np
import pytest

from survgen.data.index import build_index
from survgen.data.synth import LABEL_STEP, RARE, SEGMENT_SHARE, plan_segments, segment_shares, synthesize_dataset
from survgen.data.video import probe_video, read_frames
from survgen.io import OutputPathError
from tests.conftest import dataset_contents

TINY = dict(num_videos=4, frames_per_video=90, size=32)  # 8 segments: one per class


def test_same_seed_gives_the_same_dataset_and_another_seed_a_different_one(tmp_path):
    a = dataset_contents(synthesize_dataset(tmp_path / "a", seed=5, **TINY))
    b = dataset_contents(synthesize_dataset(tmp_path / "b", seed=5, **TINY))
    c = dataset_contents(synthesize_dataset(tmp_path / "c", seed=6, **TINY))
    assert a.keys() == b.keys() == c.keys() and len(a) == 4
    for name in a:
        assert a[name][0] == b[name][0]
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert any(a[n][0] != c[n][0] or a[n][1].shape != c[n][1].shape or not np.array_equal(a[n][1], c[n][1])
               for n in a)


def test_layout_is_sar_rarp50_with_a_label_every_sixth_frame(synth_dataset):
    assert (synth_dataset / "README.txt").read_text().startswith("survgen procedural")
    assert not (synth_dataset / "classes.json").exists()  # the default SAR-RARP50 vocabulary applies
    folders = sorted(synth_dataset.glob("video_*"))
    assert [f.name for f in folders] == [f"video_{i:02d}" for i in range(1, 13)]
    for folder in folders:
        info = probe_video(folder / "video_left.avi")
        assert (info.height, info.width, info.fps) == (64, 64, 10.0)
        lines = (folder / "action_discrete.txt").read_text().splitlines()
        frames = [int(line.split(",")[0]) for line in lines]
        classes = {int(line.split(",")[1]) for line in lines}
        assert frames == list(range(0, info.num_frames, LABEL_STEP))
        assert classes <= set(range(8))


def test_segment_plan_is_exactly_imbalanced_with_every_class_and_no_class_twice_in_a_row():
    plan = plan_segments(36, 270, np.random.default_rng(0))
    classes = [c for video in plan for c, _ in video]
    counts = np.bincount(classes, minlength=8)
    assert counts.min() >= 1
    shares = counts / counts.sum()
    np.testing.assert_allclose(shares, SEGMENT_SHARE, atol=0.02)
    assert all(a != b for video in plan for (a, _), (b, _) in zip(video, video[1:]))
    assert all(30 <= n <= 60 and n % LABEL_STEP == 0 for video in plan for _, n in video)
    with pytest.raises(ValueError, match="fewer than the 8 classes"):
        plan_segments(2, 60, np.random.default_rng(0))


def test_the_rare_share_sets_each_rare_class_and_keeps_the_others_proportions():
    shares = segment_shares(0.012)
    assert sum(shares) == pytest.approx(1) and all(shares[c] == 0.012 for c in RARE)
    common = [c for c in range(8) if c not in RARE]
    np.testing.assert_allclose([shares[c] / shares[0] for c in common], [SEGMENT_SHARE[c] / SEGMENT_SHARE[0] for c in common])
    counts = np.bincount([c for v in plan_segments(30, 270, np.random.default_rng(1), segment_shares(0.1)) for c, _ in v],
                         minlength=8)
    assert all(counts[c] == 18 for c in RARE)  # one each, then 10 % of the other 172 of the 180 segments
    assert segment_shares() == SEGMENT_SHARE  # the default dataset is unchanged
    for bad in (0, 0.34, -0.1):
        with pytest.raises(ValueError, match="rare_share must be in"):
            segment_shares(bad)


def test_rare_classes_are_rare_and_every_class_has_clips(synth_dataset):
    counts = build_index(synth_dataset).class_counts()
    assert all(counts[c] >= 2 for c in range(8)), counts
    for rare in (1, 6, 7):
        for common in (2, 3, 4):
            assert counts[rare] < counts[common], counts


def _motion(clip: np.ndarray, lag: int) -> float:
    grey = clip.astype(np.float32).mean(-1)
    return float(np.abs(grey[lag:] - grey[:-lag]).mean())


def test_classes_differ_in_motion(synth_dataset):
    """Motion alone tells classes apart: idle G0 moves least, G5 circles (periodic), G4 pulls away (not),
    and a nearest-centroid classifier on five motion numbers beats chance on held-out videos."""
    index = build_index(synth_dataset)
    lags = (1, 2, 4, 8, 15)
    features, labels, videos = [], [], []
    for clip in index.clips:
        frames = read_frames(clip.video, index.frames(clip))
        features.append([_motion(frames, lag) for lag in lags])
        labels.append(clip.class_id)
        videos.append(clip.video_id)
    features, labels, videos = np.log(np.array(features)), np.array(labels), np.array(videos)
    mean = np.stack([features[labels == c].mean(0) for c in range(8)])
    lag4, lag8, lag15 = lags.index(4), lags.index(8), lags.index(15)
    assert mean[0, lag4] < mean[1:, lag4].min()  # G0: nothing happens
    assert mean[5, lag15] < mean[5, lag8]  # G5: after a turn the instruments come back
    assert mean[4, lag15] > mean[4, lag8]  # G4: the needle keeps moving away

    correct = 0
    for video in np.unique(videos):
        train, test = videos != video, videos == video
        centroids = np.stack([features[train & (labels == c)].mean(0) for c in range(8)])
        scale = features[train].std(0)
        distance = (((features[test][:, None] - centroids[None]) / scale) ** 2).sum(-1)
        correct += int((distance.argmin(1) == labels[test]).sum())
    accuracy = correct / len(labels)
    assert accuracy > 0.3, f"motion features separate classes poorly: {accuracy:.2f} (chance 0.125)"


def test_overwrite_replaces_only_a_dataset_it_wrote(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    for overwrite in (False, True):  # a folder survgen did not make is refused, --overwrite or not
        with pytest.raises(OutputPathError, match="keep.txt"):
            synthesize_dataset(out, overwrite=overwrite, **TINY)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    out = tmp_path / "synth"
    synthesize_dataset(out, **TINY)
    with pytest.raises(OutputPathError, match="--overwrite"):
        synthesize_dataset(out, **TINY)
    first = (out / "video_01" / "action_discrete.txt").read_text()
    synthesize_dataset(out, overwrite=True, **{**TINY, "seed": 1})
    assert (out / "video_01" / "action_discrete.txt").read_text() != first
    (out / "thesis.tex").write_text("x")  # a dataset survgen made, with a user's file added: kept
    with pytest.raises(OutputPathError, match="thesis.tex"):
        synthesize_dataset(out, overwrite=True, **TINY)
    assert (out / "thesis.tex").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "synth"]  # no temporary folder left behind
