import dataclasses
import enum
import json
from dataclasses import dataclass, field

import pytest

from vqabench.config import (
    EvalConfig,
    Stage,
    TrainConfig,
    apply_overrides,
    config_hash,
    eval_config,
    to_jsonable,
    train_config,
)
from vqabench.tasks import TaskKind


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    width: int = 4
    ratio: float = 0.25


@dataclass(frozen=True)
class ModelCfg:
    name: str = "tiny"
    pretrained: bool = True
    layers: int = 2
    dropout: float = 0.1
    tags: tuple[str, ...] = ()
    sizes: tuple[int, ...] = (1, 2)
    head: int | None = 7
    root: str | None = "/data"
    workers: int | None = None
    colour: Colour = Colour.RED
    inner: Inner = field(default_factory=Inner)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def test_apply_overrides_returns_a_new_frozen_copy():
    cfg = ModelCfg()
    new = apply_overrides(cfg, {"layers": 5})
    assert new.layers == 5
    assert cfg.layers == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.layers = 1  # type: ignore[misc]


def test_apply_overrides_empty_is_equal_copy():
    assert apply_overrides(ModelCfg(), {}) == ModelCfg()


def test_nested_dotted_keys():
    new = apply_overrides(ModelCfg(), {"train.epochs": 3, "train.batch_size": "16", "inner.width": "9"})
    assert new.train.epochs == 3
    assert new.train.batch_size == 16
    assert new.inner == Inner(width=9, ratio=0.25)
    # Untouched nested fields keep their defaults.
    assert new.train.label_smoothing == TrainConfig().label_smoothing


def test_dotted_lr_merges_one_learning_rate():
    cfg = apply_overrides(ModelCfg(), {"train.lrs": {"head": 1e-3, "backbone": 1e-5}})
    new = apply_overrides(cfg, {"train.lrs.head": "0.02"})
    assert new.train.lrs == {"head": 0.02, "backbone": 1e-5}
    assert cfg.train.lrs == {"head": 1e-3, "backbone": 1e-5}


def test_dotted_lr_adds_a_new_group():
    new = apply_overrides(TrainConfig(), {"lrs.backbone": "1e-5"})
    assert new.lrs == {"head": 1e-3, "backbone": 1e-5}


def test_mapping_from_string():
    new = apply_overrides(TrainConfig(), {"lrs": "head=0.1,text=0.2"})
    assert new.lrs == {"head": 0.1, "text": 0.2}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("layers", "3", 3),
        ("dropout", "0.5", 0.5),
        ("dropout", 1, 1.0),
        ("name", 12, "12"),
        ("pretrained", "true", True),
        ("pretrained", "Yes", True),
        ("pretrained", "off", False),
        ("pretrained", "0", False),
        ("tags", "a,b", ("a", "b")),
        ("tags", "a,,b,", ("a", "b")),
        ("tags", "", ()),
        ("tags", ["x"], ("x",)),
        ("sizes", "10,20", (10, 20)),
        ("head", "none", None),
        ("head", None, None),
        ("head", "12", 12),
    ],
)
def test_type_coercion(key, value, expected):
    new = apply_overrides(ModelCfg(), {key: value})
    got = getattr(new, key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("key", "value", "expected"), [("workers", "4", 4), ("root", "none", None)])
def test_pep604_optional_coercion(key, value, expected):
    assert getattr(apply_overrides(ModelCfg(), {key: value}), key) == expected


def test_tuple_items_are_coerced_to_the_item_type():
    with pytest.raises(ValueError, match=r"override config\.sizes='x': expected int"):
        apply_overrides(ModelCfg(), {"sizes": "1,x"})


def test_unknown_field_names_it_and_suggests():
    with pytest.raises(ValueError, match=r"config: unknown field 'layer'; did you mean 'layers'\?"):
        apply_overrides(ModelCfg(), {"layer": 3})


def test_unknown_nested_field_names_the_path():
    with pytest.raises(ValueError, match=r"model x\.train: unknown field 'epoch'; did you mean 'epochs'"):
        apply_overrides(ModelCfg(), {"train.epoch": 3}, where="model x")


def test_unknown_field_without_close_match_lists_known():
    with pytest.raises(ValueError, match=r"unknown field 'zzz'; known: .*dropout.*layers"):
        apply_overrides(ModelCfg(), {"zzz": 1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("layers", "three", r"override cfg\.layers='three': expected int"),
        ("dropout", "high", r"override cfg\.dropout='high': expected float"),
        ("pretrained", "maybe", r"override cfg\.pretrained='maybe': expected bool"),
        ("train.epochs", "1.5", r"override cfg\.train\.epochs='1\.5': expected int"),
    ],
)
def test_bad_value_names_key_and_expected_type(key, value, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(ModelCfg(), {key: value}, where="cfg")


def test_sub_field_of_a_scalar_is_rejected():
    with pytest.raises(ValueError, match=r"field 'layers' has no sub-fields \(got layers\.x\)"):
        apply_overrides(ModelCfg(), {"layers.x": 1})


def test_bad_merged_learning_rate_names_key():
    with pytest.raises(ValueError, match=r"train\.lrs\.head.*float"):
        apply_overrides(ModelCfg(), {"train.lrs.head": "fast"})


def test_config_hash_is_stable_across_dict_order():
    a = {"model": "x", "lrs": {"head": 1e-3, "backbone": 1e-5}, "seed": 0}
    b = {"seed": 0, "lrs": {"backbone": 1e-5, "head": 1e-3}, "model": "x"}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    assert all(c in "0123456789abcdef" for c in config_hash(a))


def test_config_hash_of_dataclass_order_of_lrs():
    x = apply_overrides(TrainConfig(), {"lrs": {"a": 1.0, "b": 2.0}})
    y = apply_overrides(TrainConfig(), {"lrs": {"b": 2.0, "a": 1.0}})
    assert config_hash(x) == config_hash(y)


@pytest.mark.parametrize(
    "overrides",
    [{"layers": 3}, {"train.epochs": 14}, {"train.lrs.head": 2e-3}, {"tags": "a"}, {"colour": Colour.BLUE}],
)
def test_config_hash_differs_for_different_values(overrides):
    assert config_hash(apply_overrides(ModelCfg(), overrides)) != config_hash(ModelCfg())


def test_config_hash_known_value():
    # Pins the hash recipe: changing it invalidates every cached result.
    assert config_hash({"a": 1}) == "015abd7f5cc57a2d"


def test_to_jsonable_nested_dataclass_and_enum():
    out = to_jsonable(ModelCfg(tags=("a",)))
    assert out["colour"] == "red"
    assert out["tags"] == ["a"]
    assert out["inner"] == {"width": 4, "ratio": 0.25}
    assert out["train"]["lrs"] == {"head": 1e-3}
    assert out["train"]["streams"] == ["train"] and out["train"]["stages"] == []
    assert out["eval"]["splits"] == ["val", "test"]
    assert out["head"] == 7 and out["workers"] is None
    assert json.loads(json.dumps(out)) == out


def test_to_jsonable_sorts_mapping_keys():
    out = to_jsonable({"b": 1, "a": (Colour.BLUE,)})
    assert list(out) == ["a", "b"]
    assert out == {"a": ["blue"], "b": 1}


def test_to_jsonable_stringifies_keys():
    assert to_jsonable({3: 1.5}) == {"3": 1.5}


def test_to_jsonable_str_enum_serialises_as_its_value():
    assert json.dumps(to_jsonable({"kind": TaskKind.VQA})) == '{"kind": "vqa"}'


def test_to_jsonable_str_enum_is_a_plain_str():
    out = to_jsonable({"kind": TaskKind.VQA})["kind"]
    assert type(out) is str and str(out) == "vqa"


def test_eval_splits_live_on_the_eval_config():
    assert "eval_splits" not in {f.name for f in dataclasses.fields(TrainConfig)}
    new = apply_overrides(ModelCfg(), {"eval.splits": "test", "eval.batch_size": "8"})
    assert new.eval == EvalConfig(batch_size=8, splits=("test",))
    assert new.train == TrainConfig()


def test_train_and_eval_config_helpers():
    @dataclass(frozen=True)
    class EvalOnly:
        name: str = "zs"

    assert train_config(ModelCfg()) == TrainConfig()
    assert train_config(EvalOnly()) is None
    assert eval_config(EvalOnly()) == EvalConfig()
    assert eval_config(apply_overrides(ModelCfg(), {"eval.precision": "fp32"})).precision == "fp32"


def test_best_metric_defaults_to_the_primary_metric():
    assert TrainConfig().best_metric == ""


def test_a_recipe_without_stages_is_one_stage_named_train():
    cfg = TrainConfig(epochs=3, lrs={"head": 0.1}, warmup_epochs=0.5, schedule="step", step_every=2, streams=("train",))
    (stage,) = cfg.resolved_stages()
    assert stage == Stage("train", 3, {"head": 0.1}, 0.5, "step", 2, 0.1, ("train",), 0)


def test_stages_take_what_they_leave_none_from_the_recipe():
    cfg = TrainConfig(
        epochs=4,
        lrs={"head": 1e-3},
        streams=("train", "target_train"),
        stages=(Stage("probe", epochs=1), Stage("tune", lrs={"head": 1e-4, "backbone": 1e-5}, schedule="step")),
    )
    probe, tune = cfg.resolved_stages()
    assert (probe.name, probe.epochs, dict(probe.lrs), probe.schedule) == ("probe", 1, {"head": 1e-3}, "cosine")
    assert probe.streams == ("train", "target_train") and probe.warmup_epochs == cfg.warmup_epochs
    assert (tune.epochs, dict(tune.lrs), tune.schedule) == (4, {"head": 1e-4, "backbone": 1e-5}, "step")
    assert (tune.step_every, tune.step_gamma) == (cfg.step_every, cfg.step_gamma)


def test_stage_overrides_by_name_and_by_index():
    cfg = TrainConfig(stages=(Stage("probe", epochs=1), Stage("tune", epochs=2)))
    new = apply_overrides(cfg, {"stages.tune.epochs": "5", "stages.0.lrs.head": "0.5"})
    assert [s.epochs for s in new.stages] == [1, 5]
    assert dict(new.stages[0].lrs) == {"head": 0.5}
    assert cfg.stages[1].epochs == 2


def test_stage_override_errors_name_the_stage():
    cfg = TrainConfig(stages=(Stage("probe"), Stage("tune")))
    with pytest.raises(ValueError, match=r"train\.stages: no item 'tuen'; did you mean 'tune'"):
        apply_overrides(cfg, {"stages.tuen.epochs": 1}, where="train")
    with pytest.raises(ValueError, match=r"train\.stages\.tune: name a field"):
        apply_overrides(cfg, {"stages.tune": 1}, where="train")
    with pytest.raises(ValueError, match=r"train\.stages\.tune: unknown field 'epoch'"):
        apply_overrides(cfg, {"stages.tune.epoch": 1}, where="train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "linear"}, r"train\.schedule 'linear': choose cosine or step"),
        ({"targets": "fuzzy"}, r"train\.targets 'fuzzy': choose hard or soft"),
        ({"val_every": 0}, r"train\.val_every must be >= 1"),
        ({"stages": (Stage("a"), Stage("a"))}, r"stage names must be unique"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_bad_stage_schedule_names_the_stage():
    cfg = TrainConfig(stages=(Stage("tune", schedule="linear"),))
    with pytest.raises(ValueError, match=r"train\.stages\.tune\.schedule 'linear'"):
        cfg.resolved_stages()


def test_overrides_are_validated_like_the_constructor():
    with pytest.raises(ValueError, match=r"train\.targets 'x'"):
        apply_overrides(ModelCfg(), {"train.targets": "x"})
    assert apply_overrides(ModelCfg(), {"train.streams": "train,target_train"}).train.streams == (
        "train",
        "target_train",
    )
