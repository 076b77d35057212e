"""The LiMBeR recipe on the built-in data end to end (slow: up to an hour on 2 CPU cores).

    pytest -m slow tests/integration/test_limber_recipe.py

configs/tiny.py (the image tower), configs/lm_shapes.py (the caption LM) and
configs/limber_shapes.py (the linear map), each run as its docstring says;
then the captions LiMBeR writes for 200 fresh `shapes` images name the
image's colour and its shape far above chance (1/6 each; 0.4 is 8 standard
deviations of a chance-level share over 200 images, sqrt(1/6 * 5/6 / 200) = 0.026).
"""
import os

import pytest

from runs import REPO, records, run_main

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 3600  # a whole recipe run on 2 CPU cores


def test_limber_on_shapes_names_colour_and_shape(tmp_path):
    clip, lm, limber = (str(tmp_path / name) for name in ("clip_tiny", "lm_shapes", "limber_shapes"))
    run_main(os.path.join(REPO, "configs", "tiny.py"), clip, timeout=RUN_TIMEOUT_S)
    run_main(os.path.join(REPO, "configs", "lm_shapes.py"), lm, timeout=RUN_TIMEOUT_S)
    run_main(
        os.path.join(REPO, "configs", "limber_shapes.py"), limber,
        f"--config.limber.image_from={clip}", f"--config.limber.lm_from={lm}", timeout=RUN_TIMEOUT_S,
    )
    (final,) = [r for r in records(limber) if "val_color/named" in r]
    print({k: v for k, v in final.items() if k.endswith("/named") or k.endswith("/cider")})
    assert final["val_color/named"] > 0.4 and final["val_shape/named"] > 0.4, final
