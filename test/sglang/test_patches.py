"""The patch series (``patches/``) and the rebuilt SGLang that ``make install`` puts in the venv.

The wheel-based tests need the pinned wheel in ``.cache/wheels`` (``make install`` / ``make
patch`` download it once); without it they skip, and then run offline.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_dcp.sglang import patch_series

ROOT = Path(__file__).resolve().parents[2]
PATCH_DIR = ROOT / "patches"
SERIES = patch_series.series(PATCH_DIR)


def _make_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile defines no {name}"
    return m.group(1)


def _wheel() -> Path:
    version = _make_var("SGLANG_VERSION")
    wheel = _make_var("SGLANG_WHEEL").replace("$(SGLANG_WHEEL_DIR)", _make_var("SGLANG_WHEEL_DIR"))
    path = ROOT / wheel.replace("$(SGLANG_VERSION)", version)
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not cached; `make patch` downloads it")
    return path


def test_series_is_numbered_named_and_documented():
    assert SERIES, "patches/ holds no *.patch"
    readme = (PATCH_DIR / "README.md").read_text()
    for i, p in enumerate(SERIES, 1):
        assert re.fullmatch(rf"{i:04d}-[a-z0-9]+(-[a-z0-9]+)*\.patch", p.name), p.name
        assert p.name in readme, f"patches/README.md does not describe {p.name}"
        assert all(f.startswith("sglang/") for f in patch_series.touched_files(p)), p.name


def test_cached_wheel_is_the_recorded_one():
    assert patch_series.sha256(_wheel()) == _make_var("SGLANG_WHEEL_SHA256")


def test_series_applies_compiles_and_reverses_cleanly():
    files = patch_series.check(_wheel(), SERIES)
    assert "sglang/srt/managers/data_parallel_controller.py" in files
    assert "sglang/srt/managers/load_snapshot.py" in files


def test_each_patch_applies_and_reverses_on_its_own_prefix():
    # Every prefix of the series is a valid series: a patch never depends on a later one.
    for n in range(1, len(SERIES) + 1):
        patch_series.check(_wheel(), SERIES[:n])


def test_a_patch_that_no_longer_matches_is_rejected(tmp_path):
    stale = tmp_path / "0001-stale.patch"
    text = SERIES[0].read_text()
    # Break one context line, as an upstream edit of the surrounding code would.
    stale.write_text(re.sub(r"^ (\S)", r" #\1", text, count=1, flags=re.M))
    with pytest.raises(patch_series.PatchError, match="does not apply cleanly"):
        patch_series.check(_wheel(), [stale])


def test_installed_sglang_is_the_rebuilt_wheel(tmp_path):
    dist = importlib.metadata.distribution("sglang")
    assert dist.version == _make_var("SGLANG_VERSION")
    wheel_meta = dist.read_text("WHEEL") or ""
    build = _make_var("SGLANG_BUILD_TAG")
    assert f"Build: {build}" in wheel_meta.splitlines(), (
        f"installed sglang is not the rebuilt wheel (no 'Build: {build}' in its WHEEL); "
        "run `make patch`"
    )
    # Every file the series touches is, byte for byte, the wheel's copy with the series applied.
    patch_series.apply(_wheel(), SERIES, tmp_path)
    for rel in {f for p in SERIES for f in patch_series.touched_files(p)}:
        installed = Path(dist.locate_file(rel))
        assert installed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs"


# A fresh interpreter runs the DP controller's entry point as SGLang's spawned process does, but
# stops it at its first call after load_plugins() (publish), before any scheduler is launched.
_DPC_PROBE = r"""
import inspect, json
from sglang.srt.managers import data_parallel_controller as dpc
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang_dcp.sglang import plugin

before = {"registered": plugin._REGISTERED, "patched": plugin.DPC_INIT in HookRegistry._patched}

class Stop(Exception):
    pass

def stop(*args, **kwargs):
    raise Stop

dpc.publish = stop
try:
    dpc.run_data_parallel_controller_process(None, None, None)
except Stop:
    pass
init = dpc.DataParallelController.__init__
hook = inspect.getclosurevars(init).nonlocals.get("hook")
after = {
    "registered": plugin._REGISTERED,
    "patched": plugin.DPC_INIT in HookRegistry._patched,
    "our_hook_wraps_init": hook is plugin._on_dp_controller_ready,
}
params = list(inspect.signature(inspect.unwrap(init)).parameters)
print("PROBE " + json.dumps({"before": before, "after": after, "init_params": params}))
"""


@pytest.fixture(scope="module")
def dpc_probe() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _DPC_PROBE], capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE ") :])


def test_dp_controller_process_loads_plugins_and_our_hook_is_active(dpc_probe):
    # Importing the module loads no plugin; the (patched) entry point does.
    assert dpc_probe["before"] == {"registered": False, "patched": False}
    assert dpc_probe["after"] == {"registered": True, "patched": True, "our_hook_wraps_init": True}


def test_dpc_hook_matches_the_pinned_signature(dpc_probe):
    # _on_dp_controller_ready(result, controller, *args, **kwargs) relies on self coming first.
    assert dpc_probe["init_params"] == [
        "self",
        "server_args",
        "port_args",
        "run_scheduler_process_func",
    ]


def test_installed_load_snapshot_has_the_dcp_section():
    """patches/0002: the rebuilt wheel's LoadSnapshot carries, encodes and renders ``dcp``."""
    import msgspec
    from sglang.srt.managers import load_snapshot as ls

    assert "dcp" in ls.LoadSnapshot.__struct_fields__ and "dcp" in ls.LoadSnapshot.VALID_SECTIONS
    section = {"guest_kv_tokens": 128, "exchange_ms_last_step": 0.25}
    snap = ls.LoadSnapshot(dp_rank=1, num_used_tokens=7, dcp=section)
    back = ls.snapshot_decoder.decode(ls.snapshot_encoder.encode(snap))
    assert back.dcp == section and isinstance(back.dcp["guest_kv_tokens"], int)
    assert back.to_dict({"dcp"}) == {**back.to_dict({"core"}), "dcp": section}
    assert back.to_dict({"all"})["dcp"] == section and back.to_dict(None)["dcp"] == section
    assert "dcp" not in back.to_dict({"core"}) and "dcp" not in back.to_dict({"queues"})
    # Without the section nothing changes, on the wire or in /v1/loads.
    plain = ls.LoadSnapshot(dp_rank=0)
    assert "dcp" not in plain.to_dict(None)
    assert "dcp" not in msgspec.msgpack.decode(ls.snapshot_encoder.encode(plain))
    assert ls.snapshot_decoder.decode(ls.snapshot_encoder.encode(plain)).dcp is None


def test_loads_prometheus_format_renders_the_dcp_section():
    from sglang.srt.entrypoints.v1_loads import _format_loads_prometheus
    from sglang.srt.managers.load_snapshot import LoadSnapshot

    loads = [LoadSnapshot(dp_rank=r, dcp={"guest_kv_tokens": 10 * r}) for r in (0, 1)]
    text = _format_loads_prometheus(loads, None).body.decode()
    assert 'sglang_dcp_guest_kv_tokens{dp_rank="0"} 0' in text
    assert 'sglang_dcp_guest_kv_tokens{dp_rank="1"} 10' in text


def test_make_patch_is_a_no_op_until_a_patch_changes():
    """The stamp logic: installed and up to date -> nothing to do; any newer patch -> rebuild."""
    if not (ROOT / ".venv" / ".sglang-dcp-patched").exists():
        pytest.skip("no patched venv here; `make install` makes one")
    _wheel()

    def question(*extra):  # make -q: exit 0 = up to date, 1 = would rebuild; runs nothing
        return subprocess.run(
            ["make", "-q", *extra, "patch"], cwd=ROOT, capture_output=True
        ).returncode

    assert question() == 0, "installed wheel is older than patches/; run `make patch`"
    for p in SERIES:
        assert question("-W", str(p.relative_to(ROOT))) == 1, f"editing {p.name} would not rebuild"
