"""The benchmark command: argument handling everywhere, a short real run on a GPU."""
import numpy as np
import pytest

from pydsv4 import bench
from pydsv4.cuda import gpu_available


def test_unknown_width_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["ops", "--widths", "huge"])
    assert e.value.code == 2 and "unknown width 'huge'" in capsys.readouterr().err


def test_rotation_covers_l2_without_unbounded_sets():
    assert bench._sets_needed(bench.L2_FOOTPRINT * 2) == 1
    assert bench._sets_needed(bench.L2_FOOTPRINT // 10) == 10
    assert bench._sets_needed(1) == bench.MAX_SETS


def test_the_same_bytes_copy_moves_whole_granules_of_at_least_half_the_bytes():
    granule = bench.COPY_GRANULE
    for moved in (2 * granule, 2 * granule + 2, 326987776, 64 * (129280 * 4 + 4)):
        half = bench.same_bytes_copy_size(moved)
        assert half % granule == 0 and moved // 2 <= half < moved // 2 + granule
    assert bench.same_bytes_copy_size(326987776) == 163495936  # hc_pre at V4-Pro x 4096: 163493888 rounded up
    assert bench.same_bytes_copy_size(1) == granule


def test_only_selects_a_family_or_filters_op_names():
    assert bench.selected_families("norm") == ["norm"]
    assert bench.selected_families("mhc_pre") == list(bench.FAMILIES)  # op names decide, family by family
    assert bench.selected_families(None) == list(bench.FAMILIES)


def test_without_gpu_it_says_why(capsys):
    ok, reason = gpu_available(tuple(bench.FAMILIES))
    if ok:
        pytest.skip("a GPU is present: the GPU smoke test below covers the command")
    assert bench.main(["ops", "--tokens", "1"]) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.gpu(*bench.FAMILIES)
def test_bench_runs_and_reports_a_roofline_fraction(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert bench.main(["ops", "--widths", "flash", "--tokens", "13", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "copy bandwidth" in text and "%copy" in text
    import json
    rows = json.load(open(out))["rows"]
    assert rows and all(0 < r["copy_fraction"] < 1.5 and r["us"] > 0 for r in rows)
    if bench._torch() is not None:  # the GPU machine's torch: every op with a torch peer was timed against it
        with_peer = [r for r in rows if r["op"].startswith(("embed", "norm_rms_bf16", "sample"))]
        assert len(with_peer) == 6 and all(r["peer_us"] > 0 for r in with_peer)


@pytest.mark.gpu("embed")
def test_no_peer_leaves_the_torch_peers_out(tmp_path):
    out = tmp_path / "rows.json"
    assert bench.main(["ops", "--widths", "flash", "--tokens", "13", "--only", "embed", "--no-peer", "--json",
                       str(out)]) == 0
    import json
    rows = json.load(open(out))["rows"]
    assert [r["op"] for r in rows] == ["embed_gather_bf16"] and rows[0]["peer_us"] is None


@pytest.mark.gpu
@pytest.mark.parametrize("top_k, top_p", [(50, 0.9), (0, 0.9), (0, 0.3), (1, 1.0), (7, 0.999)])
def test_the_sampling_peer_keeps_the_tokens_the_definition_keeps(top_k, top_p):
    """The peer (vLLM's torch-native filters) does the work ours does: the same kept set per row, but for at most
    the one token whose fp32 cumulative mass (summed in another order) lands on the other side of top_p."""
    torch = bench._torch()
    if torch is None:
        pytest.skip("no torch with CUDA here: the bench's peers exist only on the GPU machine")
    from pydsv4.sampling import top_p_mask
    z = np.random.default_rng(top_k).standard_normal((16, 5000)).astype(np.float32) * np.float32(3 / 0.8)
    ours = np.ones_like(z, dtype=bool)
    if top_k:
        ours &= z >= np.partition(z, z.shape[1] - top_k, axis=1)[:, z.shape[1] - top_k, None]
    if top_p < 1.0:
        ours = np.stack([top_p_mask(z[r], ours[r], top_p) for r in range(z.shape[0])])
    peers = torch.isfinite(bench.peer_filter(torch, torch.from_numpy(z).cuda(), top_k, top_p)).cpu().numpy()
    assert ours.any(axis=1).all() and (peers & ~ours | ours & ~peers).sum(axis=1).max() <= 1


def test_sampling_rows_reach_a_decode_step_at_flash_width_only():
    assert [c.op for c in bench.sample_cases("flash", 0, 0, bench.MAX_SAMPLE_ROWS)] == [
        "sample_greedy_f32", "sample_tokens_f32(T)", "sample_tokens_f32(T,k,p)", "sample_tokens_f32(T,p)"]
    assert bench.sample_cases("flash", 0, 0, bench.MAX_SAMPLE_ROWS + 1) == []
    assert bench.sample_cases("pro", 0, 0, 64) == []  # the vocab does not change with the width
