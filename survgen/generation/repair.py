"""Checking the videos a generation manifest lists, and making the lost or damaged ones again.

A re-run of a generation (`survgen.generation.run`) checks what is on disk before it makes
new candidates: every video the manifest names (and its GIF with --gif) must exist, decode
and have its frame count; a missing or damaged one is made again in its recorded batch,
judged again and written atomically (`survgen.generation.candidates`), and labels.csv is
rewritten from the files that exist.
"""

from __future__ import annotations

from survgen.console import say, warn
from survgen.generation.candidates import Candidates, video_files, video_problem
from survgen.generation.distributed import World
from survgen.generation.folder import MANIFEST, Part, record_key

LISTED = 5  # files named in a message before "and N more"


def repair(candidates: Candidates, videos: list[dict], save, world: World, part: Part) -> None:
    """Make again, in their recorded batches, the listed videos that are missing or damaged on disk, and
    rewrite labels.csv and the manifest (`save`) from what exists. Each process checks and remakes every
    `world.size`-th batch."""
    cfg, out = candidates.cfg, candidates.out
    mine = _recorded_batches(videos)[world.rank :: world.size]
    order = {record_key(v): i for i, v in enumerate(videos)}
    found = sorted((f for share in world.gather(_damaged(mine, candidates)) for f in share),
                   key=lambda key_and_problems: order[key_and_problems[0]])  # in manifest order
    if found and world.main:
        reasons = [problem for _, problems in found for problem in problems]
        listed = sum(len(video_files(r, cfg.gif)) for r in videos)
        say(f"{out}: {len(reasons)} of the {listed} video files listed in {MANIFEST} are missing or damaged: "
            f"{_listing(reasons)}; making {len(found)} video(s) again from their recorded seeds")
    shares = world.gather(_remake(mine, {key for key, _ in found}, candidates, part, save))
    remade = {record_key(r): r for share, _ in shares for r in share}
    videos[:] = [remade.get(record_key(v), v) for v in videos]  # the other processes' remade records too
    changed = [r for _, share in shares for r in share]
    if found and world.main:
        say(f"{out}: regenerated {len(found)} video(s) from their seeds")
    if changed and world.main:
        now = [f"{r['class']}_{r['candidate']:05d} ({'accepted' if r['accepted'] else 'rejected'})" for r in changed]
        warn(f"{out}: {len(changed)} regenerated video(s) got another verdict from the classifier than recorded: "
             f"{_listing(now)}; the manifest now says so, and candidates are made until each class has --n "
             f"{cfg.n} accepted")
    save()


def _recorded_batches(videos: list[dict]) -> list[list[dict]]:
    """The records by the batch they were sampled in; a record from before batches were recorded, on its own."""
    batches: dict[tuple[int, int], list[dict]] = {}
    for record in videos:
        batches.setdefault((record["class_id"], record.get("batch", record["candidate"])), []).append(record)
    return list(batches.values())


def _damaged(batches: list[list[dict]], candidates: Candidates) -> list[tuple[tuple[int, int], list[str]]]:
    """The records of `batches` with a file missing or damaged on disk: each one's key, and its files' problems."""
    cfg, out = candidates.cfg, candidates.out
    found = []
    for record in (r for batch in batches for r in batch):
        problems = [f"{f} ({why})" for f in video_files(record, cfg.gif)
                    if (why := video_problem(out / f, record.get("frames", cfg.num_frames), cfg.fps))]
        if problems:
            found.append((record_key(record), problems))
    return found


def _remake(batches: list[list[dict]], damaged: set, candidates: Candidates, part: Part,
            save) -> tuple[list[dict], list[dict]]:
    """Make the `damaged` records (keys) of `batches` again, a batch at a time, saving after each; returns the
    records remade and those of them whose verdict changed."""
    remade, changed = [], []
    for batch in batches:
        records = [r for r in batch if record_key(r) in damaged]
        if records:
            changed += candidates.remake(batch, records)
            remade += records
            part.add(records)
            save()
    return remade, changed


def _listing(items: list[str]) -> str:
    more = len(items) - LISTED
    return ", ".join(items[:LISTED]) + (f" and {more} more" if more > 0 else "")
