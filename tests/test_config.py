import pytest

from uda.config import ConfigError, load_config

ROOTS = ["data.source.root=/s", "data.target.root=/t"]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    f = write(tmp_path, "bad.yaml", "data:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ROOTS)
    assert "data.batch_sise" in str(e.value) and "bad.yaml" in str(e.value)


def test_unknown_key_in_parent_yaml_names_parent(tmp_path):
    write(tmp_path, "parent.yaml", "trainer:\n  max_stepz: 3\n")
    f = write(tmp_path, "child.yaml", "defaults: [parent.yaml]\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"parent\.yaml: invalid key 'trainer\.max_stepz'"):
        load_config(f, ROOTS)


def test_wrong_type_and_unknown_override_fail(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(None, ROOTS + ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match="command line 'foo.bar=1'"):
        load_config(None, ROOTS + ["foo.bar=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ROOTS + ["seed"])
    with pytest.raises(ConfigError, match="model.name='resnet9000'"):
        load_config(None, ROOTS + ["model.name=resnet9000"])


def test_missing_roots_are_named():
    with pytest.raises(ConfigError, match="data.source.root, data.target.root"):
        load_config(None, [])


def test_layering_defaults_yaml_and_overrides(tmp_path):
    write(tmp_path, "parent.yaml", "seed: 1\ntrainer:\n  max_steps: 10\n  val_every: 5\n")
    f = write(tmp_path, "child.yaml", "defaults: [parent.yaml]\ntrainer:\n  max_steps: 20\n")
    cfg = load_config(f, ROOTS + ["trainer.devices=2", "data.source_transform.crop=[64,32]"])
    assert cfg.seed == 1 and cfg.trainer.max_steps == 20 and cfg.trainer.val_every == 5
    assert cfg.trainer.devices == 2 and list(cfg.data.source_transform.crop) == [64, 32]
    assert cfg.data.source.root == "/s" and cfg.run.dir is None


@pytest.mark.parametrize("path", ["configs/toy/source_only.yaml", "configs/toy/oracle.yaml",
                                  "configs/gta5_cityscapes/source_only.yaml",
                                  "configs/synthia_cityscapes/source_only.yaml"])
def test_shipped_configs_load(path):
    from conftest import REPO
    cfg = load_config(REPO / path, ROOTS)
    assert cfg.trainer.max_steps > 0
    if "synthia" in path:
        assert cfg.data.source.dataset == "synthia"
