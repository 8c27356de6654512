"""Every sglang-dcp hook target (and every SGLang callable the glue uses) exists in the installed
SGLang with the parameters the hook table expects (docs/integration.md §9 step 1)."""

from __future__ import annotations

import inspect
import pkgutil
import warnings

import pytest

from sglang_dcp.sglang import hooks, plugin

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)


def _short(hook):
    return ".".join(hook.target.rsplit(".", 2)[-2:])


@pytest.mark.parametrize("hook", hooks.HOOKS, ids=_short)
def test_hook_target_resolves_with_the_pinned_signature(hook):
    hooks.check(hook.target, hook.params)  # raises HookSignatureError with the difference
    assert hook.kind in ("BEFORE", "AFTER", "AROUND", "REPLACE")
    assert hook.where in ("any", "launcher") and hook.when in ("always", "dcp", "shard")


@pytest.mark.parametrize("hook", hooks.HOOKS, ids=lambda h: h.hook)
def test_our_hook_functions_resolve_and_take_the_target_arguments(hook):
    fn = pkgutil.resolve_name(hook.hook)
    params = list(inspect.signature(fn).parameters)
    lead = {"AFTER": ["result"], "AROUND": ["original"], "BEFORE": [], "REPLACE": []}[hook.kind]
    assert params[: len(lead)] == lead
    # self (and the other leading arguments) are passed positionally after the lead.
    assert params[len(lead)] == hook.params[0] or params[len(lead)] == "controller"
    target = pkgutil.resolve_name(hook.target)
    assert inspect.iscoroutinefunction(inspect.unwrap(target)) == inspect.iscoroutinefunction(fn)


@pytest.mark.parametrize("target,params", hooks.USES, ids=[t for t, _ in hooks.USES])
def test_sglang_callables_we_use_have_the_pinned_signature(target, params):
    hooks.check(target, params)


def test_a_changed_signature_fails_loudly():
    with pytest.raises(hooks.HookSignatureError, match="not the pinned 0.5.21"):
        hooks.check(hooks.HOOKS[0].target, ("self",))


def test_dpc_hook_is_the_plugins_and_always_on():
    dpc = hooks.HOOKS[0]
    assert dpc.target == plugin.DPC_INIT and dpc.when == "always" and dpc.where == "any"
    assert pkgutil.resolve_name(dpc.hook) is plugin._on_dp_controller_ready


def test_selection_by_process_and_switch():
    always = [h for h in hooks.HOOKS if h.when == "always"]
    assert hooks.selected(False, launcher=True) == always
    assert hooks.selected(False, launcher=False) == [h for h in always if h.where == "any"]
    # the input guard is always on where the tokenizer manager runs
    assert {h.hook.split(":")[0] for h in always if h.where == "launcher"} == {
        "sglang_dcp.sglang.guard"}
    planner = [h for h in hooks.HOOKS if h.when != "shard"]
    assert hooks.selected(True, launcher=False) == [h for h in planner if h.where == "any"]
    assert hooks.selected(True, launcher=True) == planner
    assert hooks.selected(True, launcher=False, sharding=True) == [
        h for h in hooks.HOOKS if h.where == "any"]
    assert hooks.selected(True, launcher=True, sharding=True) == list(hooks.HOOKS)


def test_every_hook_is_listed_in_the_module_table():
    doc = hooks.__doc__
    for h in hooks.HOOKS:
        cls_method = _short(h)
        assert cls_method in doc, f"{cls_method} missing from the hooks.py table"
