"""The latent cache: every frame's VAE posterior, encoded once, for both training stages.

The VAE is frozen in stage 1 and stage 2, so encoding the same frames again
at every step only costs decoding and encoder time. `build_latent_cache`
stores, for every frame that some clip of the index covers (so every stage-1
frame and every stage-2 clip of any class), the posterior's mean and standard
deviation, not one sample of it: a step from the cache draws its own sample
`mean + std · ε` with ε from the step's generator, exactly as diffusers'
`DiagonalGaussianDistribution.sample(generator)` does after encoding (see
`survgen.diffusion.objective.sample_latents`).

On disk, `CACHE/`:

    manifest.json          what the cache was built for, and which frames are where
    shards/HASH-00000.npy  (n, 2, c, h, w): mean, std of n frames of the video whose content hash starts HASH

The manifest records the VAE's hash (of its weights), the image size, the
storage dtype, the dataset root and clip settings as the user gave them, and
per video its path relative to that root, content hash, byte size and
modification time, and its shards with their frame numbers. Opening a cache
for training refuses another VAE, another image size, a video the cache does
not hold or one changed since (size and mtime first; on a difference the
content hash decides), and frames it lacks (another clip rate or length),
each with the mismatch and the rebuild command.

Building writes the manifest first (the plan), then each shard atomically
(complete or absent), then marks the manifest complete; a killed build rerun
with the same options skips the shards already there.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from survgen.data.datasets import ClipDataset, FrameDataset, to_pixels
from survgen.data.index import VideoIndex
from survgen.data.video import read_frames
from survgen.io import atomic_path, output_folder, write_json_atomic

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT = 1
# float16 halves disk and read bandwidth, and its rounding (relative 2^-11 on
# the mean) lies far below the noise the diffusion adds even at its smallest
# timestep (√(1-ᾱ_1) ≈ 0.03 on unit-scale latents), so training cannot tell it
# apart; float32 stores the posterior exactly, for the equality tests.
DTYPES = ("float16", "float32")
FRAMES_PER_SHARD = 512  # sd15 at 256 px: 8 MiB per float16 shard
REBUILD = "rebuild it with `survgen data cache --data DIR --spatial RUN1 --out CACHE` (tiny: --vae RUN_VAE for --spatial)"


class LatentCacheError(ValueError):
    """A latent cache that does not fit the model, image size, dataset or clips it is used with."""


# ---------------------------------------------------------------- hashes
def content_hash(path: str | Path) -> str:
    """BLAKE2b of a file's bytes (hex, 32 digits)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def vae_hash(vae: torch.nn.Module) -> str:
    """BLAKE2b of a VAE's weights (names, dtypes, shapes and bytes), so any other VAE hashes differently."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(vae.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- building
def frames_per_video(index: VideoIndex) -> dict[Path, list[int]]:
    """Every frame some clip of the index covers, per video, sorted: what both stages read."""
    frames: dict[Path, set[int]] = {}
    for clip in index.clips:
        frames.setdefault(clip.video, set()).update(index.frames(clip))
    return {video: sorted(f) for video, f in frames.items()}


def build_latent_cache(index: VideoIndex, vae, out: str | Path, *, image_size: int, vae_source: str,
                       dtype: str = "float16", frames_per_shard: int = FRAMES_PER_SHARD, batch_size: int = 16,
                       device: str | torch.device | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Path:
    """Encode every frame the index's clips cover into the cache folder `out`; return `out`.

    `vae_source` (the run or folder the VAE came from, as the user gave it) is
    recorded for the error messages. `progress(done, total)` is called with
    frames after each encoded batch. Rerun with the same arguments, a killed
    build continues with its missing shards; a finished one returns at once.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if image_size % (downsample := 2 ** (len(vae.config.block_out_channels) - 1)):
        raise ValueError(f"image size {image_size} is not a multiple of the VAE's downsampling ({downsample})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = vae.to(device).eval()
    manifest = _plan(index, vae, out, image_size=image_size, vae_source=vae_source, dtype=dtype,
                     frames_per_shard=frames_per_shard)
    _start_or_continue(out, manifest)
    videos = {_relative(video, index.root): video for video in frames_per_video(index)}
    shards = [(videos[rel], shard) for rel, entry in manifest["videos"].items() for shard in entry["shards"]]
    total = sum(len(s["frames"]) for _, s in shards)
    done = sum(len(s["frames"]) for _, s in shards if (out / s["file"]).exists())
    if progress:
        progress(done, total)
    for video, shard in shards:
        if (out / shard["file"]).exists():
            continue
        posterior = []
        for start in range(0, len(shard["frames"]), batch_size):
            frames = shard["frames"][start:start + batch_size]
            posterior.append(_encode(vae, video, frames, image_size, device).astype(dtype))
            done += len(frames)
            if progress:
                progress(done, total)
        with atomic_path(out / shard["file"]) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(posterior))
    write_json_atomic(out / MANIFEST, {**manifest, "complete": True})
    return out


@torch.no_grad()
def _encode(vae, video: Path, frames: list[int], image_size: int, device: torch.device) -> np.ndarray:
    """(n, 2, c, h, w) float32: posterior mean and std of the frames, decoded as the datasets decode them."""
    pixels = to_pixels(read_frames(video, frames, image_size)).to(device)
    posterior = vae.encode(pixels).latent_dist
    return torch.stack([posterior.mean, posterior.std], dim=1).float().cpu().numpy()


def _plan(index: VideoIndex, vae, out: Path, *, image_size: int, vae_source: str, dtype: str,
          frames_per_shard: int) -> dict:
    """The manifest of the cache to build: settings, videos with their hashes, and the shards to write."""
    previous = _read_manifest(out) if (out / MANIFEST).exists() else None
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    videos = {}
    for video, frames in frames_per_video(index).items():
        rel = _relative(video, index.root)
        stat = video.stat()
        known = (previous or {}).get("videos", {}).get(rel, {})
        same_file = (known.get("size"), known.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
        digest = known["hash"] if same_file else content_hash(video)
        videos[rel] = {"hash": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "shards": [
            {"file": f"{SHARDS}/{digest[:16]}-{k:05d}.npy", "frames": frames[start:start + frames_per_shard]}
            for k, start in enumerate(range(0, len(frames), frames_per_shard))]}
    return {
        "format": FORMAT,
        "vae": {"hash": vae_hash(vae), "source": vae_source},
        "image_size": image_size,
        "latent_shape": [vae.config.latent_channels, image_size // downsample, image_size // downsample],
        "dtype": dtype,
        "data": str(index.root),
        "clips": {"clip_length": index.clip_length, "clip_fps": index.clip_fps,
                  "frame_stride": None if index.clip_fps else index.frame_stride},
        "frames_per_shard": frames_per_shard,
        "videos": videos,
        "complete": False,
    }


def _start_or_continue(out: Path, manifest: dict) -> None:
    """Write the plan into a new cache folder, or check that an existing one was started with the same plan."""
    if (out / MANIFEST).exists():
        previous = _read_manifest(out)
        differs = [key for key, value in _what_is_cached(manifest).items() if _what_is_cached(previous)[key] != value]
        if differs:
            raise LatentCacheError(
                f"{out}: holds a latent cache started with other {', '.join(differs)} "
                f"({_describe(previous)}); choose a new --out, or delete {out} to rebuild it here")
        return
    output_folder(out, option="--out", marker=MANIFEST)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, manifest)


def _what_is_cached(manifest: dict) -> dict:
    """The settings and contents that make two caches the same, whatever their sources and file times."""
    return {"VAE": manifest["vae"]["hash"], "image size": manifest["image_size"], "dtype": manifest["dtype"],
            "data": manifest["data"], "clips": manifest["clips"], "frames_per_shard": manifest["frames_per_shard"],
            "videos": {rel: (v["hash"], v["shards"]) for rel, v in manifest["videos"].items()}}


def _relative(video: Path, root: Path) -> str:
    """A video's path as the manifest keys it: relative to the dataset root, or as given when outside it."""
    try:
        return Path(video).relative_to(root).as_posix()
    except ValueError:
        return str(video)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise LatentCacheError(f"{folder}: not a latent cache (no {MANIFEST}); {REBUILD}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LatentCacheError(f"{path}: unreadable ({e}); {REBUILD}") from None
    if manifest.get("format") != FORMAT:
        raise LatentCacheError(f"{path}: cache format {manifest.get('format')}, this survgen reads {FORMAT}; {REBUILD}")
    return manifest


def _describe(manifest: dict) -> str:
    return (f"VAE {manifest['vae']['hash'][:12]} from {manifest['vae']['source']}, {manifest['image_size']} px, "
            f"{manifest['dtype']}, data {manifest['data']}, {_clips(**manifest['clips'])}")


def _clips(clip_length: int, clip_fps: float | None, frame_stride: int | None) -> str:
    rate = f"clip rate {clip_fps:g} fps" if clip_fps else f"frame stride {frame_stride}"
    return f"{clip_length}-frame clips at {rate}"


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class _VideoShards:
    frames: np.ndarray  # every cached frame number of the video, sorted (shard k holds positions k·n … (k+1)·n-1)
    files: tuple[str, ...]


class LatentCache:
    """A finished latent cache, opened read-only; shards are memory-mapped as they are first read."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise LatentCacheError(f"{self.folder}: the cache was not finished; rerun the `survgen data cache` "
                                   "command that started it to complete it")
        self.image_size: int = self.manifest["image_size"]
        self.vae_hash: str = self.manifest["vae"]["hash"]
        self.frames_per_shard: int = self.manifest["frames_per_shard"]
        self._videos: dict[str, _VideoShards] = {}  # keyed by the index's path of each video
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self):
        # DataLoader workers open their own maps: pickling an np.memmap would copy its data.
        return {**self.__dict__, "_open": OrderedDict()}

    def check_model(self, vae, image_size: int) -> None:
        """Refuse a cache built with another VAE or at another image size than the model being trained."""
        if image_size != self.image_size:
            raise LatentCacheError(
                f"{self.folder}: built at {self.image_size} px, but this training runs at {image_size} px; "
                f"train with --image-size {self.image_size}, or {REBUILD} and --image-size {image_size}")
        if vae_hash(vae) != self.vae_hash:
            raise LatentCacheError(
                f"{self.folder}: built with another VAE ({self.manifest['vae']['source']}, weights "
                f"{self.vae_hash[:12]}) than this model's; {REBUILD} with the run you train from")

    def attach(self, index: VideoIndex) -> None:
        """Check that the cache holds every video and frame of the index, unchanged; then serve them."""
        videos = self.manifest["videos"]
        for video, frames in frames_per_video(index).items():
            rel = _relative(video, index.root)
            if rel not in videos:
                raise LatentCacheError(
                    f"{self.folder}: holds no latents of {video} (the cache was built for {self.manifest['data']}); "
                    f"{REBUILD} and --data {index.root}")
            entry = videos[rel]
            _check_unchanged(video, entry, self.folder)
            shards = _VideoShards(np.array([f for s in entry["shards"] for f in s["frames"]], dtype=np.int64),
                                  tuple(s["file"] for s in entry["shards"]))
            missing = np.setdiff1d(np.asarray(frames, dtype=np.int64), shards.frames)
            if missing.size:
                raise LatentCacheError(
                    f"{self.folder}: lacks {missing.size} frame(s) of {video} that these clips need (first: "
                    f"{missing[0]}): the cache was built for {_clips(**self.manifest['clips'])}, this training "
                    f"uses {_clips(index.clip_length, index.clip_fps, index.frame_stride)}; {REBUILD} and the "
                    "clip rate and length you train with (--clip-fps, --clip-length)")
            self._videos[str(video)] = shards

    def posterior(self, video: Path, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 mean and std `(n, c, h, w)` of `frames` of `video` (one the cache was attached to)."""
        shards = self._videos[str(video)]
        positions = np.searchsorted(shards.frames, np.asarray(frames, dtype=np.int64))
        numbers, rows = np.divmod(positions, self.frames_per_shard)
        if (numbers == numbers[0]).all():  # a clip almost always lies in one shard
            stored = self._shard(shards.files[numbers[0]])[rows]
        else:
            stored = np.concatenate([self._shard(shards.files[n])[r:r + 1] for n, r in zip(numbers, rows)])
        posterior = torch.from_numpy(stored).float()
        return posterior[:, 0], posterior[:, 1]

    def _shard(self, file: str) -> np.ndarray:
        if file not in self._open:
            if len(self._open) >= 64:  # each map holds a file descriptor
                self._open.popitem(last=False)
            self._open[file] = np.load(self.folder / file, mmap_mode="r")
        self._open.move_to_end(file)
        return self._open[file]


def open_latent_cache(folder: str | Path, vae, image_size: int) -> LatentCache:
    """The cache at `folder`, refused unless it was built with `vae` at `image_size` (the model being trained)."""
    cache = LatentCache(folder)
    cache.check_model(vae, image_size)
    return cache


def _check_unchanged(video: Path, entry: dict, folder: Path) -> None:
    try:
        stat = video.stat()
    except OSError as e:
        raise LatentCacheError(f"{video}: cannot open ({e.strerror or e})") from None
    if (stat.st_size, stat.st_mtime_ns) == (entry["size"], entry["mtime_ns"]):
        return
    if content_hash(video) != entry["hash"]:
        raise LatentCacheError(f"{folder}: {video} changed since the cache was built (its content hash differs); "
                               f"{REBUILD}")


# ---------------------------------------------------------------- datasets
class CachedClipDataset(ClipDataset):
    """`ClipDataset`'s clips from the cache. Item `i`: `{"latent_mean", "latent_std": float32 (f, c, h, w), "class_id"}`."""

    def __init__(self, index: VideoIndex, cache: LatentCache):
        super().__init__(index, size=cache.image_size)
        cache.attach(index)
        self.cache = cache

    def __getitem__(self, i: int) -> dict:
        clip = self.index.clips[i]
        mean, std = self.cache.posterior(clip.video, self.index.frames(clip))
        return {"latent_mean": mean, "latent_std": std, "class_id": clip.class_id}


class CachedFrameDataset(FrameDataset):
    """`FrameDataset`'s frames from the cache. Item `i`: `{"latent_mean", "latent_std": float32 (c, h, w), "class_id"}`."""

    def __init__(self, index: VideoIndex, cache: LatentCache):
        super().__init__(index, size=cache.image_size)
        cache.attach(index)
        self.cache = cache

    def __getitem__(self, i: int) -> dict:
        video = self.videos[int(self.video_numbers[i])]
        mean, std = self.cache.posterior(video, [int(self.frame_numbers[i])])
        return {"latent_mean": mean[0], "latent_std": std[0], "class_id": int(self.class_ids[i])}
