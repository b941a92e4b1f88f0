"""The main job on an existing workdir: ownership, the lock, changed configs, stale outputs."""


import pytest

from configs import calvin
from launch.run import run
from launch.workdir import WorkdirError
from tests.test_data_safety import listing


def test_a_folder_that_is_not_a_workdir_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "figures").mkdir()
    with pytest.raises(WorkdirError, match=r"holds figures/, thesis\.tex\) and the main job did "
                                           r"not make it \(no config\.json\)"):
        run(calvin.get_config("tiny"), str(tmp_path))
    assert listing(tmp_path) == {"thesis.tex": b"mine"}
