"""Video I/O, the clip index (both layouts, bad input), the torch Datasets and `survgen data`."""

import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from survgen.classes import ClassVocabulary
from survgen.cli.main import app
from survgen.data.datasets import ClipDataset, FrameDataset
from survgen.data.index import DatasetError, build_index, video_id
from survgen.data.video import VideoReadError, probe_video, read_frames, write_video


def _moving_frames(n=20, h=32, w=48):
    """A bright square sliding across a gradient: every frame differs from the last."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = np.linspace(40, 200, w, dtype=np.uint8)[None, None]
    frames[..., 2] = np.linspace(200, 40, h, dtype=np.uint8)[None, :, None]
    for i in range(n):
        x = i * (w - 8) // max(1, n - 1)
        frames[i, 10:18, x : x + 8] = 255
    return frames


def _labels(folder):
    return [tuple(int(v) for v in line.split(",")) for line in (folder / "action_discrete.txt").read_text().splitlines()]


def _expected_clips(root, clip_length=16, step=6):
    """Clip count from the label files by brute force: every centre on the 6-frame grid whose
    16 frames lie inside the video and carry one label."""
    total = 0
    for folder in sorted(root.glob("video_*")):
        labels = _labels(folder)
        n = probe_video(folder / "video_left.avi").num_frames
        per_frame = np.full(n, -1)
        for (f, c), nxt in zip(labels, [f for f, _ in labels[1:]] + [n]):
            per_frame[f:nxt] = c
        for centre in range(0, n, step):
            start = centre - clip_length // 2
            if start >= 0 and start + clip_length <= n and len(set(per_frame[start : start + clip_length])) == 1:
                total += per_frame[start] >= 0
    return total


# ---------------------------------------------------------------- video I/O
@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".mp4", ".gif"])
def test_write_video_round_trip_keeps_every_frame(tmp_path, suffix):
    frames = _moving_frames()
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=12)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically: no temp file left
    if suffix == ".gif":
        with Image.open(path) as gif:
            assert gif.n_frames == len(frames)
        return
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (20, 32, 48)
    assert info.fps == pytest.approx(12)
    decoded = read_frames(path, range(20)).astype(int)
    if suffix == ".mkv":  # FFV1: lossless
        np.testing.assert_array_equal(decoded, frames)
    tolerance = 3 if suffix == ".avi" else 12  # MJPEG near-lossless, H.264 lossy
    assert np.abs(decoded - frames).mean() < tolerance


def test_write_video_mp4_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    path = write_video(tmp_path / "clip.mp4", _moving_frames(), fps=10)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert probe_video(path).num_frames == 20


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="use one of .mkv, .avi, .mp4, .gif"):
        write_video(tmp_path / "x.webm", _moving_frames(), 10)
    with pytest.raises(ValueError, match=r"uint8 of shape \(n, H, W, 3\)"):
        write_video(tmp_path / "x.avi", np.zeros((2, 8, 8), np.float32), 10)
    assert list(tmp_path.iterdir()) == []
    odd = write_video(tmp_path / "odd.avi", np.full((3, 31, 33, 3), 90, np.uint8), 10)  # MJPEG 4:4:4 takes odd sizes
    assert read_frames(odd, [2]).shape == (1, 31, 33, 3)
    noise = np.random.default_rng(0).integers(0, 256, (3, 31, 33, 3), dtype=np.uint8)  # so does FFV1, bit for bit
    np.testing.assert_array_equal(read_frames(write_video(tmp_path / "odd.mkv", noise, 10), range(3)), noise)


def test_read_frames_keeps_order_and_repeats_and_refuses_missing_frames(tmp_path):
    frames = _moving_frames()
    path = write_video(tmp_path / "v.avi", frames, 10)
    got = read_frames(path, [7, 2, 7])
    assert np.abs(got[0].astype(int) - got[2]).max() == 0
    assert np.abs(got[1].astype(int) - frames[2]).mean() < 3 and np.abs(got[0].astype(int) - frames[7]).mean() < 3
    with pytest.raises(VideoReadError, match=r"v\.avi: frame 20 does not exist"):
        read_frames(path, [19, 20])
    with pytest.raises(VideoReadError, match="cannot open"):
        read_frames(tmp_path / "missing.avi", [0])


def test_frame_cache_decodes_each_frame_once_within_its_budget(tmp_path, monkeypatch):
    import survgen.data.video as video

    paths = [write_video(tmp_path / f"v{i}.avi", _moving_frames(), 10) for i in range(2)]
    plain = [read_frames(p, [3, 9, 3], 16) for p in paths]
    decoded = []
    real_decode = video._decode
    monkeypatch.setattr(video, "_decode", lambda path, unique, *a: decoded.append(list(unique)) or real_decode(path, unique, *a))
    one_video = 20 * 16 * 16 * 3
    with video.frame_cache(one_video) as cache:
        first = read_frames(paths[0], [3, 9, 3], 16)
        first[:] = 0  # a caller's array never aliases the cache
        again = read_frames(paths[0], [9, 10, 3], 16)
        assert decoded == [[3, 9], [10]]  # only the frame not read before is decoded
        assert np.array_equal(again[[0, 2]], plain[0][[1, 0]])
        assert cache.bytes == 3 * 16 * 16 * 3
        read_frames(paths[1], range(20), 16)  # a whole second video: over the budget, the first is dropped
        assert cache.bytes <= one_video and len(cache.videos) == 1
        assert np.array_equal(read_frames(paths[0], [3, 9], 16), plain[0][:2])
        assert decoded[-1] == [3, 9]
    assert video._FRAME_CACHE is None
    read_frames(paths[0], [3], 16)
    assert decoded[-1] == [3]  # outside the block nothing is kept


def test_truncated_and_corrupt_files_raise_video_read_error_naming_the_file(tmp_path):
    path = write_video(tmp_path / "v.avi", _moving_frames(), 10)
    data = path.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])
    (tmp_path / "junk.avi").write_bytes(os.urandom(4000))
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(VideoReadError, match=r"cut\.avi: truncated or damaged"):
        probe_video(tmp_path / "cut.avi")
    with pytest.raises(VideoReadError, match=r"cut\.avi"):
        read_frames(tmp_path / "cut.avi", [0])
    for name in ("junk.avi", "empty.avi"):
        with pytest.raises(VideoReadError, match=name.replace(".", r"\.")):
            probe_video(tmp_path / name)


def test_over_reported_frame_count_is_replaced_by_the_counted_one(tmp_path):
    """A header claiming more frames than the file holds (decord's hang case) must not be trusted."""
    data = bytearray(write_video(tmp_path / "v.avi", _moving_frames(), 10).read_bytes())
    for chunk, offset in ((b"avih", 16), (b"strh", 32)):  # total frames / stream length fields
        at = data.find(chunk) + 8 + offset
        assert struct.unpack_from("<I", data, at)[0] == 20
        struct.pack_into("<I", data, at, 60)
    liar = tmp_path / "liar.avi"
    liar.write_bytes(bytes(data))
    with av.open(str(liar)) as container:
        assert container.streams.video[0].frames == 60  # the lie is visible to a reader that trusts headers
    assert probe_video(liar).num_frames == 20
    assert read_frames(liar, [19]).shape == (1, 32, 48, 3)
    with pytest.raises(VideoReadError, match="frame 20 does not exist"):
        read_frames(liar, [20])


# ---------------------------------------------------------------- SAR-RARP50 layout
def test_sar_rarp50_round_trip(synth_dataset):
    index = build_index(synth_dataset)
    assert index.layout == "sar-rarp50" and index.warnings == []
    assert len(index) == _expected_clips(synth_dataset) > 100
    assert index.vocabulary == ClassVocabulary()
    counts = index.class_counts()
    assert sorted(counts) == list(range(8)) and sum(counts.values()) == len(index)
    for clip in index.clips[::25]:
        frames = list(index.frames(clip))
        assert len(frames) == 16 and frames[0] == clip.start and frames[-1] == clip.end - 1
        assert (clip.start + 8) % 6 == 0  # centred on a labelled frame
        labels = dict(_labels(clip.video.parent))
        assert labels[clip.start + 8] == clip.class_id

    dataset = ClipDataset(index)
    item = dataset[3]
    assert item["pixels"].shape == (16, 3, 64, 64) and item["pixels"].dtype == torch.float32
    assert item["class_id"] == index.clips[3].class_id
    assert -1.0 <= item["pixels"].min() < -0.5 and 0.5 < item["pixels"].max() <= 1.0
    assert ClipDataset(index, size=32)[3]["pixels"].shape == (16, 3, 32, 32)


def test_frame_stride_spreads_a_clip(synth_dataset):
    index = build_index(synth_dataset, frame_stride=2)
    clip = index.clips[0]
    assert clip.end - clip.start == 31 and list(index.frames(clip)) == list(range(clip.start, clip.end, 2))
    assert len(index) < len(build_index(synth_dataset))


def test_clip_rate_sets_each_videos_stride(tmp_path):
    """30 and 60 fps recordings in one CSV dataset: at 10 Hz their clips take every 3rd and every 6th frame."""
    for name, fps in (("slow.avi", 30), ("fast.avi", 60), ("odd.avi", 25)):
        write_video(tmp_path / name, np.zeros((200, 16, 16, 3), np.uint8), fps=fps)
    (tmp_path / "labels.csv").write_text("video,start_frame,end_frame,class\n"
                                         "slow.avi,0,200,G1\nfast.avi,0,200,G7\nodd.avi,0,200,G0\n")
    index = build_index(tmp_path, clip_fps=10)
    strides = {c.video.name: c.stride for c in index.clips}
    assert strides == {"slow.avi": 3, "fast.avi": 6, "odd.avi": 2}
    fast = next(c for c in index.clips if c.video.name == "fast.avi")
    assert list(index.frames(fast)) == list(range(fast.start, fast.start + 91, 6))
    assert any("odd.avi" in w and "12.5 fps" in w for w in index.warnings)  # 25 fps has no whole stride for 10 Hz
    assert index.stride_of(tmp_path / "slow.avi") == 3


def test_synthetic_dataset_plays_at_the_clip_rate(synth_dataset):
    """The bundled data are rendered at 10 fps, so the default clip rate takes every frame."""
    assert build_index(synth_dataset, clip_fps=10).clips == build_index(synth_dataset).clips


def test_frame_dataset_holds_each_covered_frame_once(synth_dataset):
    index = build_index(synth_dataset)
    frames = FrameDataset(index, size=32)
    covered = {(c.video, f) for c in index.clips for f in index.frames(c)}
    assert len(frames) == len(covered)
    item = frames[len(frames) // 2]
    assert item["pixels"].shape == (3, 32, 32) and -1 <= item["pixels"].min() and item["pixels"].max() <= 1
    assert set(frames.class_ids.tolist()) == set(range(8))


def test_datasets_work_in_dataloader_workers_and_pickle(synth_dataset):
    index = build_index(synth_dataset)
    index.clips = index.clips[:: len(index.clips) // 8][:8]
    dataset = ClipDataset(index, size=32)
    single = [b["pixels"] for b in torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)]
    # A worker that deadlocks (e.g. on decoder state inherited through fork) fails here instead of hanging.
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, timeout=60)
    workers = [b["pixels"] for b in loader]
    assert len(single) == len(workers) == 2
    for a, b in zip(single, workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    revived = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(revived[5]["pixels"], dataset[5]["pixels"], rtol=0, atol=0)


def test_clip_dataset_needs_size_when_videos_differ(tmp_path, synth_dataset):
    root = tmp_path / "mixed"
    shutil.copytree(synth_dataset / "video_01", root / "video_01")
    (root / "video_02").mkdir()
    n = probe_video(root / "video_01" / "video_left.avi").num_frames
    frames = read_frames(root / "video_01" / "video_left.avi", range(n))
    small = np.ascontiguousarray(frames[:, ::2, ::2])
    write_video(root / "video_02" / "video_left.avi", small, 30)
    shutil.copy(root / "video_01" / "action_discrete.txt", root / "video_02")
    index = build_index(root)
    with pytest.raises(DatasetError, match="differ in frame size.*size=N"):
        ClipDataset(index)
    assert ClipDataset(index, size=48)[0]["pixels"].shape == (16, 3, 48, 48)


# ---------------------------------------------------------------- recordings and splits
def _paired_dataset(tmp_path, synth_dataset):
    """video_05_1 / video_05_2 (one recording), plus five single recordings."""
    root = tmp_path / "paired"
    names = ["video_05_1", "video_05_2", "video_06", "video_07", "video_08", "video_09", "video_10"]
    for source, name in zip(sorted(synth_dataset.glob("video_*")), names):
        shutil.copytree(source, root / name)
    return root


def test_halves_of_a_recording_share_a_video_id(tmp_path, synth_dataset):
    assert video_id("video_41_1") == video_id("video_41_2") == video_id("video_41") == "video_41"
    assert video_id("case_3_1") == "case_3_1"
    index = build_index(_paired_dataset(tmp_path, synth_dataset))
    assert index.video_ids() == ["video_05", "video_06", "video_07", "video_08", "video_09", "video_10"]
    halves = {c.video.parent.name for c in index.clips if c.video_id == "video_05"}
    assert halves == {"video_05_1", "video_05_2"}


def test_split_by_video_never_shares_a_recording_and_is_deterministic(tmp_path, synth_dataset):
    index = build_index(_paired_dataset(tmp_path, synth_dataset))
    for seed in range(6):
        train, val = index.split_by_video(0.34, seed=seed)
        assert set(train.video_ids()).isdisjoint(val.video_ids())
        assert set(train.video_ids()) | set(val.video_ids()) == set(index.video_ids())
        assert len(train) + len(val) == len(index) and len(val.video_ids()) == 2
        have = {c for c, n in index.class_counts().items() if n}
        assert {c for c, n in train.class_counts().items() if n} == have  # no class lost from train
        again = index.split_by_video(0.34, seed=seed)[1]
        assert again.video_ids() == val.video_ids()
    assert index.split_by_video(0.0)[1].clips == []
    with pytest.raises(ValueError, match="val_fraction"):
        index.split_by_video(1.0)


def test_for_classes_accepts_ids_codes_and_names(synth_dataset):
    index = build_index(synth_dataset)
    rare = index.for_classes([1, "G6", "returning/dropping the needle"])
    assert {c.class_id for c in rare.clips} == {1, 6, 7}
    assert len(rare) == sum(index.class_counts()[c] for c in (1, 6, 7))
    assert rare.class_counts()[3] == 0 and len(index) > len(rare)


# ---------------------------------------------------------------- CSV layout
def test_csv_layout_with_ids_codes_names_and_exclusive_end(tmp_path, synth_dataset):
    root = tmp_path / "plain"
    (root / "clips").mkdir(parents=True)
    shutil.copy(synth_dataset / "video_01" / "video_left.avi", root / "clips" / "a.avi")
    shutil.copy(synth_dataset / "video_02" / "video_left.avi", root / "clips" / "b.avi")
    n = probe_video(root / "clips" / "a.avi").num_frames
    (root / "labels.csv").write_text(textwrap.dedent(f"""\
        video,start_frame,end_frame,class
        clips/a.avi,0,40,7
        clips/a.avi,40,56,G6
        clips/a.avi,56,71,tying a knot
        clips/b.avi,10,{n + 50},G2
        clips/b.avi,20,30,G3
        clips/a.avi,80,120,G99
        """))
    index = build_index(root)
    assert index.layout == "csv"
    by_class = index.class_counts()
    # In the CSV layout clips start at their segment's start, every 6 frames, and must fit it (end exclusive):
    # [0, 40): [0,16) [6,22) [12,28) [18,34) [24,40) -> 5 clips; [40, 56): [40, 56) just fits -> 1 clip;
    # [56, 71): [56, 72) overruns 71 -> no clip.
    assert by_class[7] == 5 and by_class[6] == 1 and by_class[5] == 0
    assert by_class[2] > 0 and by_class[3] == 0
    assert all(c.video_id in ("clips/a", "clips/b") for c in index.clips)
    text = "\n".join(index.warnings)
    assert "labels.csv:5: end_frame" in text and "cut to" in text  # past the end: cut
    assert "labels.csv:6: frames 20-30 overlap" in text
    assert "labels.csv:7: unknown class 'G99'" in text
    assert build_index(tmp_path / "plain", labels_csv=root / "labels.csv").class_counts() == by_class


def test_csv_layout_errors_name_the_file_and_the_header(tmp_path):
    (tmp_path / "labels.csv").write_text("file,from,to,label\nx.avi,0,10,1\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: header .* video,start_frame,end_frame,class"):
        build_index(tmp_path)
    with pytest.raises(DatasetError, match=r"nothere\.csv: no such labels CSV"):
        build_index(tmp_path, labels_csv=tmp_path / "nothere.csv")


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def damaged_dataset(synth_dataset, tmp_path_factory):
    """Three good videos, then one of each kind of damage; see the comments."""
    root = tmp_path_factory.mktemp("damaged") / "data"
    good = sorted(synth_dataset.glob("video_*"))[:3]
    for folder in good:
        shutil.copytree(folder, root / folder.name)
    source = root / "video_01"
    video_bytes = (source / "video_left.avi").read_bytes()
    n = probe_video(source / "video_left.avi").num_frames

    def make(name, video=video_bytes, labels=None):
        (root / name).mkdir()
        (root / name / "video_left.avi").write_bytes(video)
        (root / name / "action_discrete.txt").write_text(labels if labels is not None else (source / "action_discrete.txt").read_text())

    make("video_90", video=video_bytes[: len(video_bytes) // 2])  # truncated
    make("video_91", video=os.urandom(5000))  # not a video at all
    make("video_92", labels=(source / "action_discrete.txt").read_text() + "".join(f"{f},3\n" for f in range(n, n + 30, 6)))
    lines = (source / "action_discrete.txt").read_text().splitlines()
    lines[2] = "12,9"  # an id the vocabulary lacks
    lines[5] = "30,G42"
    make("video_93", labels="\n".join(lines) + "\n")
    tiny = write_video(root / "tiny.avi", np.full((10, 64, 64, 3), 120, np.uint8), 30).read_bytes()
    make("video_94", video=tiny, labels="0,3\n6,3\n")  # 10 frames: shorter than one clip
    (root / "tiny.avi").unlink()
    (root / "video_95").mkdir()  # a folder with nothing in it
    return root


def test_each_damage_is_one_warning_naming_the_file_and_the_rest_still_loads(damaged_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="survgen.data"):
        index = build_index(damaged_dataset)
    text = "\n".join(index.warnings)
    assert [r.getMessage() for r in caplog.records] == index.warnings  # logged as well as listed
    assert "video_90/video_left.avi: truncated or damaged" in text
    assert "video_91/video_left.avi: not a readable video" in text
    assert "video_92/action_discrete.txt: 5 label(s) at frames" in text and "past the end" in text
    assert "video_93/action_discrete.txt:3: class id 9 is out of range" in text
    assert "video_93/action_discrete.txt:6: unknown class 'G42'" in text
    assert "video_94/video_left.avi: no labelled segment is long enough for one 16-frame clip" in text
    assert "video_95: no video_left.avi" in text
    per_video = {}
    for clip in index.clips:
        per_video[clip.video.parent.name] = per_video.get(clip.video.parent.name, 0) + 1
    assert set(per_video) == {"video_01", "video_02", "video_03", "video_92", "video_93"}
    assert per_video["video_92"] == per_video["video_01"]  # the extra labels were dropped, nothing else
    assert 0 < per_video["video_93"] < per_video["video_01"]  # unknown-class spans give no clips


def test_nothing_found_is_a_dataset_error_saying_where_and_what(tmp_path, damaged_dataset):
    with pytest.raises(DatasetError, match=r"found no dataset.*video_\*/video_left\.avi.*labels\.csv"):
        build_index(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        build_index(tmp_path / "absent")
    only_bad = tmp_path / "bad"
    shutil.copytree(damaged_dataset / "video_91", only_bad / "video_91")
    with pytest.raises(DatasetError, match=r"no 16-frame clips .* sar-rarp50 layout.*not a readable video"):
        build_index(only_bad)
    with pytest.raises(DatasetError, match="clip_length must be a positive"):
        build_index(only_bad, clip_length=0)
    with pytest.raises(DatasetError, match="unknown layout"):
        build_index(only_bad, layout="kinetics")


def test_damaged_dataset_never_hangs(damaged_dataset):
    """Index, then decode every clip and the last frame of every video, in a child process with a deadline."""
    code = textwrap.dedent(f"""
        from survgen.data.index import build_index
        from survgen.data.video import VideoReadError, probe_video, read_frames
        index = build_index({str(damaged_dataset)!r})
        for clip in index.clips:
            read_frames(clip.video, index.frames(clip))
        refused = 0
        for video in sorted(__import__("pathlib").Path({str(damaged_dataset)!r}).glob("video_*/video_left.avi")):
            try:
                read_frames(video, [probe_video(video).num_frames - 1])
            except VideoReadError:
                refused += 1
        print("ok", len(index), refused)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "ok" and done.stdout.split()[2] == "2"  # the truncated and the junk file


# ---------------------------------------------------------------- command line
def test_cli_synth_then_stats(tmp_path):
    runner = CliRunner()
    out = tmp_path / "synth"
    args = ["data", "synth", "--out", str(out), "--num-videos", "4", "--frames-per-video", "90", "--size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert (out / "video_04" / "video_left.avi").exists()

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and again.stdout == ""
    assert "holds a synthetic dataset" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0

    plot = tmp_path / "balance.png"
    stats = runner.invoke(app, ["data", "stats", str(out), "--plot", str(plot), "--json"])
    assert stats.exit_code == 0, stats.output
    report = json.loads(stats.stdout)
    assert [row["code"] for row in report["classes"]] == [f"G{i}" for i in range(8)]
    assert sum(row["clips"] for row in report["classes"]) == report["clips"] == len(build_index(out))
    assert report["plot"] == str(plot)
    table = runner.invoke(app, ["data", "stats", str(out), "--plot", str(plot)])  # replaces its own plot
    assert table.exit_code == 0 and "G7" in table.stdout and "returning/dropping" in table.stdout
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 500


def test_cli_stats_prints_warnings_and_fails_cleanly(tmp_path, damaged_dataset):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "stats", str(damaged_dataset)])
    assert result.exit_code == 0, result.output
    assert "labelled frames" in result.stdout  # the table is the result: on stdout
    assert "warning:" in result.stderr and "video_90" in result.stderr and "truncated" in result.stderr
    assert not (damaged_dataset / "class_balance.png").exists()

    empty = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert empty.exit_code == 2 and "found no dataset" in empty.stderr
    assert "Traceback" not in empty.output
