"""What the data pipeline does with folders it did not make, odd or broken files, and peers."""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import calvin
from data.clips import ClipSettings, open_shard, prepare_clips
from data.episode import DataError, SkippedDataWarning
from data.episodes import npz_episodes, pending_episodes
from data.sim_demos import SimSettings
from data.sources import SourceOptions, generate_source
from launch.run import data_error_line, run
from tests.test_data_sources import write_calvin, write_episode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_LOCK = textwrap.dedent("""
    import os, sys
    from data.jobs import FolderLock
    lock = FolderLock(sys.argv[1])
    for folder in sys.argv[2:]:
        os.makedirs(folder)
    print("locked", flush=True)
    sys.stdin.readline()
""")


@contextlib.contextmanager
def locked_by_another_process(folder, *make_folders):
    """A child process holds the lock of `folder` (and makes `make_folders`) for the body;
    yields its pid."""
    command = [sys.executable, "-c", HOLD_LOCK, str(folder), *map(str, make_folders)]
    child = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child.pid
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=60)


def listing(root) -> dict[str, bytes]:
    """Every file under `root` with its bytes, but lock files (they name their last holder)."""
    return {os.path.relpath(os.path.join(folder, name), root):
            open(os.path.join(folder, name), "rb").read()
            for folder, _, names in os.walk(root) for name in names if name != ".lock"}


def test_generators_write_only_into_folders_they_made(tmp_path):
    """A real CALVIN split (or a folder of .npz episodes) given as a generator's path is refused
    with what is there and the format to read it as; nothing in it changes."""
    calvin = tmp_path / "task_D_D"
    write_calvin(calvin, "training", [(0, 3)], size=(8, 8))
    before = listing(calvin)
    with pytest.raises(DataError, match=r"task_D_D is not empty \(it holds training/\) and the "
                                        r"simulator generator did not make it .*'calvin' data.*"
                                        r"--config\.data\.format=calvin"):
        generate_source("sim", str(calvin), SourceOptions(sim=SimSettings(1, 0, 4, 32)))
    assert listing(calvin) == before

    episodes = tmp_path / "mine"
    episodes.mkdir()
    write_episode(episodes, "ep1", 3)
    before = listing(episodes)
    for settings_file in ("coinrun.json", "craftax.json"):  # how both claim their folders
        with pytest.raises(DataError, match=r"holds ep1\.npz.*--config\.data\.format=episodes"):
            pending_episodes(str(episodes), settings_file, {"seed": 0}, 4)
    assert listing(episodes) == before

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new"):
        assert pending_episodes(str(folder), "coinrun.json", {"seed": 0}, 2) == [0, 1]
        (folder / "episode_000000.npz").write_bytes(b"")
        assert pending_episodes(str(folder), "coinrun.json", {"seed": 0}, 2) == [1]  # resumes


def test_clips_are_written_only_into_folders_clip_preparation_made(tmp_path):
    write_episode(tmp_path, "ep1", 6)
    splits = {"train": npz_episodes(str(tmp_path))}
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"out is not empty \(it holds notes\.txt\) and clip "
                                        r"preparation did not make it \(no index\.json\)"):
        prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)
    assert os.listdir(out) == ["notes.txt"]
    os.remove(out / "notes.txt")
    prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)
    prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)  # its own: resumes


def test_the_odd_frame_size_is_the_one_fewer_files_have(tmp_path):
    """Six 16x16 episodes and one 20x20 `bad.npz` (first in name order): bad.npz is the odd one,
    with and without skip_bad."""
    for e in range(6):
        write_episode(tmp_path, f"ep{e}", 4, size=(16, 16))
    write_episode(tmp_path, "bad9", 4, size=(20, 20))
    os.rename(tmp_path / "bad9.npz", tmp_path / "bad.npz")
    with pytest.raises(DataError, match=r"bad\.npz: frames are 20x20 but 16x16 in 6 of the 7 "
                                        r"files \(e\.g\. .*ep0\.npz\)"):
        npz_episodes(str(tmp_path))
    with pytest.warns(SkippedDataWarning, match=r"skipped 1 of 7 episode files.*bad\.npz"):
        kept = npz_episodes(str(tmp_path), skip_bad=True)
    assert [e.name for e in kept] == [f"ep{e}" for e in range(6)]


def test_a_second_preparation_of_a_folder_in_use_stops_and_deletes_nothing(tmp_path):
    """While another process holds the clip folder's lock (and writes a temporary shard), a
    second preparation stops naming that process, and the temporary shard stays."""
    write_episode(tmp_path, "ep1", 9)
    splits = {"train": npz_episodes(str(tmp_path))}
    out = tmp_path / "out"
    prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)
    shutil.rmtree(out / "train" / "shard_000000")  # as if the peer had yet to write it
    temp = out / "train" / "shard_000000.tmp-99999"
    with locked_by_another_process(out, temp) as pid:
        with pytest.raises(DataError, match=rf"out is in use by another process \(pid {pid} on "):
            prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)
        assert temp.is_dir()
    shutil.rmtree(temp)
    prepare_clips(splits, str(out), ClipSettings(3, 3), progress=False)  # free again
    assert (out / "train" / "shard_000000").is_dir()


def test_a_truncated_shard_names_its_file_and_no_skip_advice(tmp_path):
    write_episode(tmp_path, "ep1", 6)
    index = prepare_clips({"train": npz_episodes(str(tmp_path))}, str(tmp_path / "out"),
                          ClipSettings(3, 3), progress=False)
    shard = tmp_path / "out" / "train" / index["shards"]["train"][0][0]
    with open(shard / "frames.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(DataError, match=r"shard_000000/frames\.npy: cannot read .*delete "
                                        r".*shard_000000 and run the stage that wrote it again"
                       ) as caught:
        open_shard(str(shard))
    assert "skip_bad" not in data_error_line(caught.value)
    (tmp_path / "bad.npz").write_bytes(b"garbage")  # a bad file: leaving it out helps
    with pytest.raises(DataError) as caught:
        npz_episodes(str(tmp_path))
    assert data_error_line(caught.value).endswith("(on the command line: "
                                                  "--config.data.skip_bad=True)")
    os.remove(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="prepared with other settings") as caught:
        prepare_clips({"train": npz_episodes(str(tmp_path))}, str(tmp_path / "out"),
                      ClipSettings(2, 2), progress=False)
    assert "skip_bad" not in data_error_line(caught.value)


def test_empty_and_short_episodes_are_named(tmp_path, capsys):
    write_episode(tmp_path, "ep1", 6)
    write_episode(tmp_path, "ep2", 2)
    np.savez(tmp_path / "ep3.npz", frames=np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"ep3\.npz: `frames` holds no frames"):
        npz_episodes(str(tmp_path))
    with pytest.warns(SkippedDataWarning, match=r"skipped 1 of 3 .*ep3\.npz"):
        episodes = npz_episodes(str(tmp_path), skip_bad=True)
    prepare_clips({"train": episodes}, str(tmp_path / "out"), ClipSettings(3, 3), progress=False)
    assert ("1 of the 2 episodes are shorter than a clip (3 frames) and give no clips (e.g. ep2: "
            "2 frames)") in capsys.readouterr().err


def test_an_npz_window_is_decompressed_once(tmp_path, monkeypatch):
    """One 600-frame episode cut into two 300-frame clips: one window of 600 frames, read with
    one np.load (not one per 256-frame chunk), and the same clips as reading frame by frame."""
    write_episode(tmp_path, "ep1", 600, size=(4, 4))
    (episode,) = npz_episodes(str(tmp_path))
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    prepare_clips({"train": [episode]}, str(tmp_path / "out"), ClipSettings(300, 300),
                  progress=False)
    assert loads.count(episode.path) == 1
    monkeypatch.setattr(np, "load", real_load)
    frames = open_shard(str(tmp_path / "out" / "train" / "shard_000000"))["frames"]
    np.testing.assert_array_equal(frames.reshape(600, 4, 4, 3), [episode.read(t, t + 1).frames[0]
                                                                  for t in range(600)])


def test_the_main_job_refuses_to_generate_into_a_users_dataset(tmp_path):
    """`--config.data.path=<a CALVIN root>` without the format: one data error line naming what
    is there and the format flag (no skip_bad advice: skipping cannot help), data untouched."""
    write_calvin(tmp_path / "task_D_D", "training", [(0, 3)], size=(8, 8))
    before = listing(tmp_path / "task_D_D")
    config = calvin.get_config("tiny")
    config.data.path, config.stages = str(tmp_path / "task_D_D"), "data"
    with pytest.raises(DataError) as caught:
        run(config, str(tmp_path / "run"))
    line = data_error_line(caught.value)
    assert "--config.data.format=calvin" in line and "skip_bad" not in line
    assert "\n" not in line and listing(tmp_path / "task_D_D") == before
