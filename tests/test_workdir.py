"""The main job on an existing workdir: ownership, the lock, changed configs, stale outputs."""


import pytest

from configs import calvin
from launch.run import run
from launch.workdir import WorkdirError, locked
from tests.test_data_safety import listing, locked_by_another_process


def test_a_folder_that_is_not_a_workdir_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "figures").mkdir()
    with pytest.raises(WorkdirError, match=r"holds figures/, thesis\.tex\) and the main job did "
                                           r"not make it \(no config\.json\)"):
        run(calvin.get_config("tiny"), str(tmp_path))
    assert listing(tmp_path) == {"thesis.tex": b"mine"}


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_first(tmp_path):
    workdir = tmp_path / "run"
    with locked_by_another_process(workdir) as pid:
        with pytest.raises(WorkdirError, match=rf"run is in use by another process \(pid {pid} "
                                               r"on .*use another --workdir"):
            run(calvin.get_config("tiny"), str(workdir))
        assert listing(workdir).keys() == {".lock"}  # nothing written
    with locked(str(workdir)):  # free once the other process is done
        pass
