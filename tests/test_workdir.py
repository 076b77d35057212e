"""A workdir that cannot be made ends the run with one line naming it, before anything compiles."""
import pytest
from test_train_step import small_config

from clip_jax.runtime.errors import RunError
from clip_jax.training.loop import train_and_evaluate


def test_a_workdir_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    workdir = str(tmp_path / "a_file" / "run")
    with pytest.raises(RunError, match=f"^cannot create the workdir {workdir}: Not a directory$"):
        train_and_evaluate(small_config(), workdir)
