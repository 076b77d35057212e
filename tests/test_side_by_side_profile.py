"""benchmarks/open_clip_side_by_side.py --profile: XLA's operation names sorted into kinds (a real trace,
in a process of its own: integration/test_side_by_side_trace.py)."""
import importlib.util
import pathlib

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "open_clip_side_by_side.py"
SPEC = importlib.util.spec_from_file_location("open_clip_side_by_side", PATH)
side_by_side = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(side_by_side)


def test_thunk_names_map_to_kinds_and_containers_are_not_counted():
    kind = side_by_side.xla_kind
    assert kind("ynn_fusion") == "matmul" and kind("dot") == "matmul (Eigen fallback)"
    assert kind("bitcast_dynamic-update-slice_fusion") == "scan slices and buffers"
    assert kind("copy_dynamic-update-slice_fusion") == "scan slices and buffers"  # the scan's, though a copy too
    assert kind("transpose_copy_fusion") == "layout copies" and kind("multiply_add_fusion") == "rest"
    assert kind("ThunkExecutor::Execute") is None and kind("while") is None and kind("end: ynn_fusion") is None
    assert side_by_side.torch_kind("aten::addmm") == "matmul" and side_by_side.torch_kind("aten::gelu") == "rest"
