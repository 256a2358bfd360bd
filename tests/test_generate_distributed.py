"""`survgen generate` in many processes: the batch plan and the class's end, the rounds with any number of
processes (threads standing in for them), and two gloo processes under torchrun making the folder one process
makes, which a killed run's parts resume to."""

import copy
import json
import os
import shutil
import threading
from dataclasses import dataclass, field

import pytest
import torch

from survgen.classes import ClassVocabulary
from survgen.generation.candidates import batch_plan, class_end
from survgen.generation.distributed import World
from survgen.generation.folder import Part
from survgen.generation.run import GenerationConfig, _generate_classes
from tests.conftest import torchrun

G6, G7 = 6, 7


def test_batches_are_fixed_blocks_of_candidate_numbers():
    assert batch_plan(set(), 2, 7) == [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]  # cut at the cap
    assert batch_plan({0, 1, 4, 5}, 2, 7) == [range(2, 4), range(6, 7)]  # a killed process's block first
    assert batch_plan({0, 1, 2}, 2, 6) == [range(3, 4), range(4, 6)]  # a block an older manifest began goes on


def test_a_class_ends_at_its_nth_accepted_candidate_once_all_before_it_are_known():
    def records(*verdicts):
        return [{"candidate": c, "accepted": a} for c, a in verdicts]

    assert class_end(records((0, False), (1, True), (2, True), (3, True)), 2, 10) == 2  # 3 is surplus
    assert class_end(records((0, False), (2, True), (3, True)), 2, 10) is None  # 1 is still missing
    assert class_end(records((0, False), (1, False)), 2, 2) == 1  # the cap
    assert class_end(records((0, True)), 2, 10) is None


@dataclass(frozen=True)
class ThreadedWorld(World):
    """Threads standing in for processes: each one's object through shared slots, a copy for everyone (as
    pickling gives), in step by a barrier."""

    slots: list = field(default_factory=list, compare=False)
    meeting: threading.Barrier | None = field(default=None, compare=False)

    def gather(self, obj) -> list:
        self.slots[self.rank] = obj
        self.meeting.wait()
        gathered = copy.deepcopy(self.slots)
        self.meeting.wait()  # no slot is overwritten before everyone has read it
        return gathered

    def barrier(self) -> None:
        self.meeting.wait()


class ScriptedCandidates:
    """Candidates with no model: candidate i of a class is accepted iff i is in `accepted[class]`. Notes what it
    samples and what it writes."""

    def __init__(self, out, cfg, accepted):
        self.out, self.cfg, self.vocabulary, self.accepted = out, cfg, ClassVocabulary(), accepted
        self.sampled, self.written = set(), []

    def make(self, class_id, indices):
        self.sampled |= {(class_id, i) for i in indices}
        return [({"candidate": i, "batch": indices[0], "batch_size": len(indices), "class_id": class_id,
                  "class": self.vocabulary.code(class_id), "accepted": i in self.accepted[class_id],
                  "file": f"videos/{i}.mp4" if i in self.accepted[class_id] else None}, None) for i in indices]

    def write(self, record, frames):
        self.written.append((record["class_id"], record["candidate"]))


def make_in_threads(size, cfg, accepted, out):
    """`_generate_classes` for G7 then G6 in `size` threads; each one's records and candidates."""
    world = {"slots": [None] * size, "meeting": threading.Barrier(size, timeout=30)}
    results, errors = [None] * size, []

    def process(rank):
        me = ThreadedWorld(rank, size, **world)
        videos, candidates = [], ScriptedCandidates(out, cfg, accepted)
        try:
            _generate_classes(candidates, videos, [G7, G6], lambda: None, None, me, Part(out, me))
        except BaseException as e:  # noqa: BLE001 - reported below; the others must not wait for this one
            errors.append(e)
            world["meeting"].abort()
        results[rank] = (videos, candidates)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_any_number_of_processes_keeps_and_writes_what_one_process_does(tmp_path, batch_size):
    accepted = {G7: {2, 3, 6, 7, 9}, G6: {5}}  # G7 ends at its 3rd accepted, candidate 6; G6 runs to the cap
    cfg = GenerationConfig(classes=["G7", "G6"], n=3, batch_size=batch_size, max_candidates=10)
    one_process = None
    for size in (1, 2, 3):
        results = make_in_threads(size, cfg, accepted, tmp_path / f"{size}")
        videos = results[0][0]
        assert all(r[0] == videos for r in results)  # every process knows every record
        kept = [(v["class_id"], v["candidate"], v["batch"], v["batch_size"], v["accepted"]) for v in videos]
        one_process = one_process or kept
        assert kept == one_process, size
        written = sorted(key for _, candidates in results for key in candidates.written)
        assert written == sorted((v["class_id"], v["candidate"]) for v in videos)  # each once, and no other
        sampled = set().union(*(candidates.sampled for _, candidates in results))
        assert (sampled > set(written)) == (size > 1 or batch_size > 1)  # made ahead or surplus: never kept
        assert sorted(p.name for p in (tmp_path / f"{size}" / "parts").glob("*")) == \
            ([f"rank-{r}-of-{size}.json" for r in range(size)] if size > 1 else [])
    assert [c for k, c, *_ in one_process if k == G7] == list(range(7))
    assert [c for k, c, *_ in one_process if k == G6] == list(range(10))
    for _, c, batch, count, _ in one_process:
        assert batch == c // batch_size * batch_size and count == min(batch_size, 10 - batch)


# ---------------------------------------------------------------- two processes, end to end
# The shipped model and classifier, small and fast: 16 frames (the classifier's clip), 2 steps, no guidance.
# With this seed the class ends at candidate 4: after rejected ones, first of its block (so 5 is surplus), in a
# block rank 0 makes (so rank 1's block 6-7 of that round is made ahead and dropped).
BATCH, CAP, SEED = 2, 8, 1
PREVIEWS = ("contact_sheet.png", "preview.mp4")
OPTIONS = ["generate", "--class", "G7", "--n", "2", "--max-candidates", str(CAP), "--batch-size", str(BATCH),
           "--sampler", "ddim", "--steps", "2", "--guidance", "1", "--reject-topk", "2", "--keep-rejected",
           "--seed", str(SEED), "--quiet"]


@pytest.fixture
def one_thread():
    """One CPU thread, as torchrun gives each process: the thread count changes the bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def in_this_process(out):
    from typer.testing import CliRunner

    from survgen.cli.main import app

    result = CliRunner().invoke(app, [*OPTIONS, "--out", str(out)])
    assert result.exit_code == 0, result.output


def in_two_processes(out):
    # `--`: torchrun would take generate's --n for an abbreviation of its own options and stop
    stdout = torchrun(["-m", "survgen", "--", *OPTIONS, "--out", str(out)], {**os.environ, "OMP_NUM_THREADS": "1"})
    assert stdout.strip() == str(out)  # the folder, once: rank 1 prints nothing


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def files(out, *leaving_out):
    """Every file of a generation folder but its manifest (and `leaving_out`), by name: its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", *leaving_out)}


def test_two_processes_make_the_folder_one_process_makes_and_a_killed_run_resumes(tmp_path, one_thread):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    in_this_process(one)
    in_two_processes(two)
    merged = manifest(two)
    assert merged == manifest(one)  # request, environment and records; nothing says how many processes
    assert files(two) == files(one)  # video bytes, labels.csv, the contact sheet and preview; no parts left

    videos = merged["videos"]
    end = videos[-1]["candidate"]
    assert not all(v["accepted"] for v in videos) and end % BATCH == 0 and end // BATCH % 2 == 0 and \
        end < CAP - BATCH, f"--seed {SEED} no longer ends the class where the test means it to; choose another"

    # killed in the round that ends the class: the round before is in the processes' parts only (rank 0 died
    # before it merged them), the last round's videos are not written; one process continues the folder
    shutil.copytree(two, resumed)
    round_of = {v["candidate"]: v["candidate"] // BATCH // 2 for v in videos}  # two blocks a round
    last = round_of[end]
    (resumed / "parts").mkdir()
    for rank in (0, 1):
        part = [v for v in videos if round_of[v["candidate"]] == last - 1 and v["batch"] // BATCH % 2 == rank]
        (resumed / "parts" / f"rank-{rank}-of-2.json").write_text(json.dumps({"videos": part}))
    (resumed / "parts" / ".rank-1-of-2.json.x1y2.tmp").write_text("{")  # a write the kill cut short
    for v in videos:
        if round_of[v["candidate"]] == last:
            (resumed / v["file"]).unlink()
    killed = {**merged, "videos": [v for v in videos if round_of[v["candidate"]] < last - 1]}
    (resumed / "manifest.json").write_text(json.dumps(killed))
    in_this_process(resumed)
    assert manifest(resumed) == merged
    assert files(resumed, *PREVIEWS) == files(two, *PREVIEWS)  # the sheet and preview: this run's videos
