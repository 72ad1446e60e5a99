import dataclasses

import pytest
import yaml

from conductivity_tf import config as C
from conductivity_tf import steps as S
from conductivity_tf.errors import UserError
from tests.conftest import assert_one_line_error, run_module


def test_default_yaml_lists_every_key_with_the_dataclass_defaults():
    with open(C.PRESET_DIR + "/default.yaml") as handle:
        listed = yaml.safe_load(handle)
    assert listed == C.config_to_dict(C.default_config())


@pytest.mark.parametrize("preset", C.list_presets())
def test_every_shipped_preset_loads_and_validates(preset):
    cfg = C.load_config(preset)
    assert isinstance(cfg, C.Config)


def test_layers_apply_in_order_and_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 7\nmodel:\n  widths: [4, 8]\n")
    cfg = C.load_config(str(path), ["train.epochs=3", "data.axes=[1]", "train.xla=true"])
    assert cfg.train.epochs == 3            # the command line wins over the file
    assert cfg.model.widths == [4, 8]       # the file wins over default.yaml
    assert cfg.data.axes == [1] and cfg.train.xla is True
    assert cfg.train.batch_size == C.default_config().train.batch_size


@pytest.mark.parametrize("override, fragments", [
    ("train.epochs=-1", ["train.epochs=-1", ">= 1"]),
    ("model.nope=1", ["unknown key model.nope", "widths"]),
    ("nope.x=1", ["unknown key nope", "data, model, train, hardware"]),
    ("train.epochs=abc", ["train.epochs", "an integer"]),
    ("model.norm=layer", ["model.norm", "batch | group | none"]),
    ("data.axes=[0,1]", ["data.axes", "[0,1,2]"]),
    ("hardware.gradient_accumulation=3", ["not divisible", "1 x 3 = 3", "30"]),
    ("epochs=3", ["needs a section"]),
    ("hardware.pipeline_stages=2", ["hardware.kind=ipu"]),
    ("train.precision=fp16", ["IPU"]),
    ("model.stem_stride=4", ["model.stem_kernel=3", "skip voxels", "model.stem_kernel=4"]),
])
def test_bad_values_are_rejected_naming_the_key(override, fragments):
    with pytest.raises(UserError) as err:
        C.load_config(overrides=[override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_steps_per_execution_must_be_a_multiple_of_accumulation():
    with pytest.raises(UserError, match="steps_per_execution=6 is not divisible"):
        C.load_config(overrides=["hardware.gradient_accumulation=4", "hardware.steps_per_execution=6"])


def test_batch_arithmetic():
    b = S.batch_arithmetic(64, replicas=4, accumulation=4)
    assert (b.micro_batch, b.global_batch) == (4, 64)
    with pytest.raises(UserError, match="use a multiple such as 48"):
        S.batch_arithmetic(50, replicas=4, accumulation=4)


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = C.load_config(overrides=["train.epochs=5", "model.widths=[8,16]"])
    C.save_config(cfg, tmp_path / "config.yaml")
    again = C.load_config(str(tmp_path / "config.yaml"))
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_train_help_lists_the_configuration_sections():
    proc = run_module("conductivity_tf.train", "--help")
    assert proc.returncode == 0
    for section in ("data:", "model:", "train:", "hardware:"):
        assert section in proc.stdout
    assert "train.epochs" in proc.stdout and "hardware.pipeline_stages" in proc.stdout


@pytest.mark.parametrize("override, fragment", [("train.epochs=-1", "train.epochs"),
                                                ("model.nope=1", "model.nope")])
def test_train_cli_bad_override_is_one_line_exit_2(override, fragment):
    assert_one_line_error(run_module("conductivity_tf.train", override), fragment)


def test_train_cli_missing_config_file():
    assert_one_line_error(run_module("conductivity_tf.train", "--config", "no_such_preset"),
                          "no_such_preset", "presets")


def test_print_config_shows_resolved_values():
    proc = run_module("conductivity_tf.train", "--print-config", "train.epochs=4")
    assert proc.returncode == 0
    assert yaml.safe_load(proc.stdout)["train"]["epochs"] == 4


def test_overrides_may_come_before_and_after_options(tmp_path):
    """The README's commands put overrides on both sides of --out."""
    proc = run_module("conductivity_tf.train", "--config", "pretrained64", "train.epochs=4", "--out",
                      str(tmp_path / "run"), "train.learning_rate=0.001", "--print-config", "model.dropout=0.25")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["train"]["epochs"], cfg["train"]["learning_rate"], cfg["model"]["dropout"]) == (4, 0.001, 0.25)
    assert cfg["model"]["widths"] == [16, 64, 128]                         # the preset was read
    assert cfg["train"]["out_dir"] == str(tmp_path / "run")
