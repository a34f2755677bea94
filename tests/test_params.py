import re

import pytest
import yaml
from pydantic import BaseModel

from pneumonia.core.errors import ParamsError
from pneumonia.core.params import Params, load_params, parse_params
from project_params import merged, project_params


def test_project_params_yaml_is_valid_and_matches_defaults_where_documented():
    params = load_params("params.yaml")
    assert params.download.source == "synthetic"
    assert params.train.lr == 1e-4
    assert params.evaluate.thresholds == (0.5, 0.25)


def test_every_key_is_required_so_params_yaml_is_the_one_source_of_defaults():
    with pytest.raises(ParamsError, match="missing key base;"):
        parse_params({})
    full = merged()
    for section, values in full.items():
        for key in values:
            raw = merged()
            del raw[section][key]
            with pytest.raises(ParamsError) as info:
                parse_params(raw)
            assert str(info.value).startswith(f"params.yaml: missing key {section}.{key};"), info.value


def test_no_setting_has_a_default():
    """A default written in Python as well as in params.yaml is a default that will disagree."""
    pending = [Params]
    while pending:
        model = pending.pop()
        for name, field in model.model_fields.items():
            assert field.is_required(), f"{model.__name__}.{name} has a default; defaults live in params.yaml only"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                pending.append(field.annotation)


def test_int_accepted_where_float_expected():
    with pytest.raises(ParamsError, match="train.lr"):
        project_params({"train": {"lr": 1}})  # 1 is out of range (0, 1)
    assert project_params({"train": {"pos_weight": 3}}).train.pos_weight == 3.0


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ({"trian": {}}, "trian"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": -1e-4}}, "train.lr"),
        ({"train": {"max_epochs": 2.5}}, "train.max_epochs"),
        ({"train": {"batch_size": True}}, "train.batch_size"),
        ({"train": {"devices": 0}}, "train.devices"),
        ({"train": {"class_balance": "smote"}}, "train.class_balance"),
        ({"download": {"source": "ftp"}}, "download.source"),
        ({"download": {"source": "local", "path": ""}}, "download.path"),
        ({"download": {"phantom": {"patients": 1}}}, "download.phantom.patients"),
        ({"split": {"train_size": 1.5}}, "split.train_size"),
        ({"split": {"train_size": 0}}, "split.train_size"),
        ({"evaluate": {"thresholds": [0.5, 1.2]}}, "evaluate.thresholds"),
        ({"dicom_to_npy": {"image_size": 8}}, "dicom_to_npy.image_size"),
        ({"train": ["lr"]}, "train"),
    ],
)
def test_bad_setting_names_the_key(raw, key):
    with pytest.raises(ParamsError) as info:
        parse_params(merged(raw))
    message = str(info.value)
    assert key in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"train": {"lr": -1e-4}}, "train.lr must be a number > 0 and < 1, got -0.0001"),
        ({"train": {"batch_size": True}}, "train.batch_size must be an integer >= 1, got True"),  # yes is no number
        ({"train": {"lr": "1e-4"}}, "got '1e-4'"),  # YAML reads 1e-4 (no dot) as text
        ({"train": {"num_workers": -1}}, "train.num_workers must be an integer >= 0 or auto"),
        ({"detect": {"image_size": 100}}, "detect.image_size must be an integer >= 32 and a multiple of 32"),
        ({"evaluate": {"thresholds": [0.5, 1.2]}}, "evaluate.thresholds has 1.2; every item must be a number > 0"),
        ({"evaluate": {"thresholds": []}}, "evaluate.thresholds must be a list of at least 1 item"),
        ({"train": {"weight_decay": 0.1}}, "train.weight_decay needs train.optimizer adamw"),  # across fields
        ({"train": {"learning_rate": 0.1}}, "unknown key train.learning_rate; valid keys here: accelerator, arch"),
    ],
)
def test_the_message_says_what_the_key_accepts(raw, words):
    with pytest.raises(ParamsError, match=re.escape(words)):
        parse_params(merged(raw))


def test_unknown_source_lists_the_choices():
    with pytest.raises(ParamsError, match="synthetic, kaggle, local"):
        project_params({"download": {"source": "ftp"}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [lr: 1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_round_trip_of_a_full_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merged({"split": {"train_size": 24000}, "dicom_to_npy": {"image_size": 224}})))
    params = load_params(path)
    assert params.split.train_size == 24000 and isinstance(params.split.train_size, int)
    assert params.dicom_to_npy.image_size == 224
