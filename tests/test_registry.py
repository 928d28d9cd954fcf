from dataclasses import dataclass

import pytest

from vqabench.registry import DatasetSpec, ModelRef, ModelSpec, NameConflictError, PluginInfo, Registry, did_you_mean
from vqabench.tasks import TaskKind
from vqabench.tasks.base import Task


@dataclass(frozen=True)
class Cfg:
    x: int = 1


def dataset(name="mini-clevr", kinds=(TaskKind.VQA,)):
    return DatasetSpec(name=name, task_kinds=kinds, config_cls=Cfg, load=lambda c, k, d: None)


def model(name="clip-lora", kinds=(TaskKind.VQA,)):
    return ModelSpec(
        name=name,
        family="clip",
        display_name="CLIP LoRA",
        task_kinds=kinds,
        config_cls=Cfg,
        build=lambda c, d, dev: None,
    )


def test_did_you_mean_close_match():
    assert did_you_mean("clip-lor", ["resnet-sbert", "clip-lora"]) == "; did you mean 'clip-lora'?"


def test_did_you_mean_several_matches_in_order():
    assert did_you_mean("hflp", ["hue", "hflip", "hflips"]) == "; did you mean 'hflip' or 'hflips'?"


def test_did_you_mean_lists_known_when_nothing_is_close():
    assert did_you_mean("zzz", ["b", "a"]) == "; known: a, b"


def test_did_you_mean_nothing_known():
    assert did_you_mean("zzz", []) == "; known: (none)"


@pytest.mark.parametrize(
    ("text", "name", "tag", "back"),
    [
        ("clip-lora", "clip-lora", None, "clip-lora"),
        ("clip-lora@random", "clip-lora", "random", "clip-lora@random"),
        ("  resnet-sbert@v2 ", "resnet-sbert", "v2", "resnet-sbert@v2"),
    ],
)
def test_model_ref_parse(text, name, tag, back):
    ref = ModelRef.parse(text)
    assert ref == ModelRef(name, tag)
    assert str(ref) == back


def test_model_ref_parse_with_a_plugin():
    ref = ModelRef.parse("resnet_sbert:resnet-sbert@random")
    assert ref == ModelRef("resnet-sbert", "random", "resnet_sbert")
    # Records and run directories name the model; the plugin is only how it was looked up.
    assert str(ref) == "resnet-sbert@random" and ref.qualified_name == "resnet_sbert:resnet-sbert"


@pytest.mark.parametrize("text", ["x@", "@random", "", "   ", ":x", "p:", "a:b:c"])
def test_model_ref_parse_rejects_bad_references(text):
    with pytest.raises(ValueError, match=r"bad model reference .*: expected NAME or NAME@TAG"):
        ModelRef.parse(text)


def test_add_and_look_up():
    reg = Registry()
    d, m = dataset(), model()
    reg.add("dataset", d, "plug-a")
    reg.add("model", m, "plug-b")
    assert reg.dataset("mini-clevr") is d
    assert reg.model("clip-lora") is m
    assert reg.owner == {("dataset", "mini-clevr"): "plug-a", ("model", "clip-lora"): "plug-b"}


def test_same_name_for_a_dataset_and_a_model_is_allowed():
    reg = Registry()
    reg.add("dataset", dataset("same"), "a")
    reg.add("model", model("same"), "b")
    assert list(reg.datasets) == ["same"] and list(reg.models) == ["same"]


@pytest.mark.parametrize(("what", "make"), [("dataset", dataset), ("model", model)])
def test_a_name_two_plugins_register_resolves_to_neither(what, make):
    reg = Registry()
    first, second = make("dup"), make("dup")
    reg.add(what, first, "first-plugin")
    reg.add(what, second, "second-plugin")
    assert (what, "dup") not in reg.owner and "dup" not in getattr(reg, f"{what}s")
    assert reg.conflicts[(what, "dup")] == {"first-plugin": first, "second-plugin": second}
    lookup = getattr(reg, what)
    with pytest.raises(
        NameConflictError,
        match=rf"{what} 'dup' is registered by plugins 'first-plugin' \(\?\) and 'second-plugin' \(\?\), so it "
        rf"resolves to neither; pick one by naming it PLUGIN:NAME \(e.g. first-plugin:dup\) or load only one",
    ):
        lookup("dup")
    assert lookup("first-plugin:dup") is first and lookup("second-plugin:dup") is second
    with pytest.raises(KeyError, match=r"plugin 'third' registers no .* 'dup'; it is registered by 'first-plugin'"):
        lookup("third:dup")


@pytest.mark.parametrize(("what", "make"), [("dataset", dataset), ("model", model)])
def test_add_rejects_a_name_registered_twice_by_one_plugin(what, make):
    reg = Registry()
    reg.add(what, make("dup"), "p")
    with pytest.raises(ValueError, match=rf"plugin 'p' registers {what} 'dup' twice"):
        reg.add(what, make("dup"), "p")
    assert reg.owner[(what, "dup")] == "p"


@pytest.mark.parametrize("name", ["", " lead", "trail ", "a/b", "a,b", "plugin:name"])
def test_add_rejects_bad_names(name):
    reg = Registry()
    with pytest.raises(ValueError, match=r"plugin 'p': invalid model name .*no '/', ',', '@' or spaces"):
        reg.add("model", model(name), "p")
    assert reg.models == {}


def test_add_rejects_inner_space():
    with pytest.raises(ValueError, match="invalid dataset name"):
        Registry().add("dataset", dataset("mini clevr"), "p")


@pytest.mark.parametrize("kind", ["nope", 3, None])
def test_add_rejects_unknown_task_kind(kind):
    reg = Registry()
    with pytest.raises(
        ValueError,
        match=r"plugin 'p': dataset 'd' declares unknown task kind .*; known kinds: vqa, answerability, zeroshot, "
        r"captioning \(a plugin adds one with the register_tasks hook\)",
    ):
        reg.add("dataset", dataset("d", kinds=(TaskKind.VQA, kind)), "p")
    assert reg.datasets == {}


def test_task_kinds_are_stored_as_plain_strings():
    reg = Registry()
    reg.add("dataset", dataset("d", kinds=(TaskKind.VQA, "zeroshot")), "p")
    kinds = reg.dataset("d").task_kinds
    assert kinds == ("vqa", "zeroshot") and all(type(k) is str for k in kinds)
    assert TaskKind.VQA == "vqa" and TaskKind.VQA in kinds


class Counting(Task):
    name = "counting"
    primary_metric = "mae"
    metric_names = ("mae", "exact")


def test_registry_starts_with_the_builtin_task_kinds():
    assert list(Registry().tasks) == ["vqa", "answerability", "zeroshot", "captioning"]


def test_add_task_then_a_dataset_may_declare_it():
    reg = Registry()
    task = Counting()
    reg.add_task(task, "count-plugin")
    assert reg.tasks["counting"] is task and reg.owner[("task", "counting")] == "count-plugin"
    reg.add("dataset", dataset("d", kinds=("counting",)), "other")
    assert reg.dataset("d").task_kinds == ("counting",)


def test_a_task_kind_two_plugins_register_conflicts_and_a_builtin_one_is_refused():
    reg = Registry()
    reg.add_task(Counting(), "first")
    reg.add_task(Counting(), "second")
    assert "counting" not in reg.tasks and set(reg.conflicts[("task", "counting")]) == {"first", "second"}
    with pytest.raises(NameConflictError, match=r"task kind 'counting' is registered by plugins 'first'"):
        reg.check_kind("counting")
    reg.add("dataset", dataset("d", kinds=("counting",)), "first")  # still a known kind name
    with pytest.raises(ValueError, match=r"plugin 'p': task kind 'vqa' is already registered by 'vqabench'"):
        reg.add_task(type("Mine", (Counting,), {"name": "vqa"})(), "p")


def test_add_task_rejects_bad_tasks():
    reg = Registry()
    with pytest.raises(ValueError, match=r"plugin 'p' registered a dict, expected a vqabench\.tasks\.base\.Task"):
        reg.add_task({"name": "x"}, "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"plugin 'p': invalid task kind name 'a/b'"):
        reg.add_task(type("Bad", (Counting,), {"name": "a/b"})(), "p")
    with pytest.raises(ValueError, match=r"task kind 'counting': primary_metric must be one of metric_names"):
        reg.add_task(type("Bad", (Counting,), {"primary_metric": "rmse"})(), "p")
    assert "counting" not in reg.tasks


def test_add_rejects_wrong_spec_type():
    with pytest.raises(ValueError, match=r"plugin 'p' registered a DatasetSpec, expected ModelSpec"):
        Registry().add("model", dataset(), "p")
    with pytest.raises(ValueError, match=r"plugin 'p' registered a dict, expected DatasetSpec"):
        Registry().add("dataset", {"name": "x"}, "p")  # type: ignore[arg-type]


def test_unknown_model_suggests():
    reg = Registry()
    reg.add("model", model("clip-lora"), "p")
    reg.add("model", model("resnet-sbert"), "p")
    with pytest.raises(KeyError, match=r"unknown model 'clip-lor'; did you mean 'clip-lora'\?"):
        reg.model("clip-lor")


def test_unknown_dataset_suggests():
    reg = Registry()
    reg.add("dataset", dataset("mini-clevr"), "p")
    with pytest.raises(KeyError, match=r"unknown dataset 'miniclevr'; did you mean 'mini-clevr'\?"):
        reg.dataset("miniclevr")


def test_unknown_name_in_empty_registry():
    with pytest.raises(KeyError, match=r"unknown dataset 'x'; known: \(none\)"):
        Registry().dataset("x")


def test_model_spec_default_random_tag():
    assert model().tags == {"random": {"pretrained": False}}


def test_plugin_info_status():
    assert PluginInfo("a", "dist", "1.0").status == "ok"
    assert PluginInfo("a", "dist", "1.0", error="ImportError: x").status == "failed"
