import pytest
import torch

from conftest import REPO
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


def test_missing_defaults_file_names_it_and_the_referencing_file(tmp_path, capsys):
    from uda.cli import main
    write(tmp_path, "parent.yaml", "defaults: [base_typo.yaml]\nseed: 1\n")
    f = write(tmp_path, "child.yaml", "defaults: [parent.yaml]\nseed: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ROOTS)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'parent.yaml'}: 'defaults' entry 'base_typo.yaml'")
    assert f"{tmp_path / 'base_typo.yaml'} not found" in msg
    assert main(["train", "--config", str(f), *ROOTS, f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uda: error: ") and err.count("\n") == 1
    assert "parent.yaml" in err and "base_typo.yaml" in err
    assert not (tmp_path / "run").exists()


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


SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("**/*.yaml")
                 if p.parent.name not in ("methods", "debias", "networks")
                 and p.name not in ("base.yaml", "official_base.yaml"))
DEBIAS_FRAGMENTS = sorted((REPO / "configs" / "debias").glob("*.yaml"))
#: shipped configs whose build takes over a few seconds on the CPU (ViT-L/14: student, EMA
#: teacher and frozen copy, 3 x 304M parameters, about 12 s)
SLOW_BUILDS = {"configs/gta5_cityscapes/vfm.yaml"}


def test_every_method_has_toy_and_real_configs():
    """Every entry of the table of methods ships a toy config, and a GTA5 and a SYNTHIA one
    unless it trains on labelled target images (the oracle: toy only)."""
    from uda.methods import METHODS
    assert {m.name for m in METHODS} >= {"source_only", "adversarial", "dranet", "oracle",
                                         "self_training", "daformer", "hrda", "mic", "vfm"}
    for m in METHODS:
        benches = ("toy",) if m.labelled_target else ("toy", "gta5_cityscapes",
                                                      "synthia_cityscapes")
        for bench in benches:
            assert f"configs/{bench}/{m.name}.yaml" in SHIPPED, (bench, m.name)


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """A local vgg19 features state dict (random weights: loading is what is exercised)."""
    import torchvision
    path = tmp_path_factory.mktemp("w") / "vgg19_features.pth"
    torch.save(torchvision.models.vgg19(weights=None).features.state_dict(), path)
    return path


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_BUILDS
                                  else p for p in SHIPPED])
def test_shipped_configs_load_and_build(path, vgg19_file):
    from uda import build
    extra = []
    if "dranet" in path and "toy" not in path:
        extra = [f"method.dranet.perceptual_weights={vgg19_file}"]
    if "toy" not in path and "dranet" not in path:  # frozen BN needs pretrained weights
        extra = ["model.freeze_bn=false"]
    cfg = load_config(REPO / path, ROOTS + extra)
    # *_official.yaml: named by their paper (tests/test_official_configs.py checks them)
    assert cfg.trainer.max_steps > 0 and (cfg.method.name in path or "_official" in path)
    assert cfg.data.source.dataset == ("synthia" if "synthia" in path else "gta5")
    module = build.build_module(cfg)
    assert module.optimizer_steps_per_iteration >= 1


@pytest.mark.parametrize("fragment", DEBIAS_FRAGMENTS, ids=lambda p: p.stem)
def test_debias_fragments_compose_onto_a_method(fragment, tmp_path):
    """Each configs/debias fragment, chained after a toy method config, enables its option."""
    method = "dranet" if fragment.stem == "style_swap" else "source_only"
    composed = tmp_path / "composed.yaml"
    composed.write_text(f"defaults: [{REPO / 'configs/toy' / method}.yaml, {fragment}]\n")
    cfg = load_config(composed, ROOTS)
    assert cfg.method.name == method and cfg.data.debias[fragment.stem].enabled


def test_frozen_bn_needs_pretrained_weights(tmp_path):
    path = REPO / "configs/gta5_cityscapes/source_only.yaml"
    with pytest.raises(ConfigError, match="model.freeze_bn=true .* model.pretrained="):
        load_config(path, ROOTS)
    weights = tmp_path / "resnet101.pth"
    weights.write_bytes(b"")
    assert load_config(path, ROOTS + [f"model.pretrained={weights}"]).model.freeze_bn


def test_vgg19_perceptual_needs_weights():
    path = REPO / "configs/gta5_cityscapes/dranet.yaml"
    with pytest.raises(ConfigError, match="perceptual_weights"):
        load_config(path, ROOTS)


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("data.val_batch_size=-1", "data.val_batch_size must be >= 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("seed=-5", "seed must be >= 0 (the global seed; use an integer >= 0), got -5"),
    ("method.optim.lr=0", "method.optim.lr must be > 0"),
    ("method.optim.lr=-0.01", "method.optim.lr must be > 0"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ROOTS + [override])
    assert message in str(e.value)


def test_lowest_allowed_values_load():
    cfg = load_config(None, ROOTS + ["data.batch_size=1", "data.val_batch_size=1",
                                     "data.num_workers=0", "seed=0", "method.optim.lr=1e-9"])
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.seed) == (1, 0, 0)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_cuda_names_the_fix(accelerator, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError) as e:
        load_config(None, ROOTS + [f"trainer.accelerator={accelerator}"])
    assert f"trainer.accelerator={accelerator}" in str(e.value)
    assert "use trainer.accelerator=cpu" in str(e.value)
    assert load_config(None, ROOTS + ["trainer.accelerator=cpu"]).trainer.accelerator == "cpu"


OLD_RUN = """
data: {source: {root: /s}, target: {root: /t},
       debias: {dacs: {enabled: %s, threshold: 0.968, ema: 0.99}}}
"""


def test_a_checkpoint_config_with_a_removed_section_switched_off_still_loads():
    """Every run before data.debias.dacs was removed stored it, switched off: evaluating or
    translating such a run's checkpoint must not fail on it; a run that used it still gets the
    removal error (its training cannot be resumed as it was)."""
    cfg = load_config(base_text=OLD_RUN % "false", base_name="run.ckpt (config)")
    assert cfg.data.source.root == "/s" and "dacs" not in cfg.data.debias
    with pytest.raises(ConfigError, match=r"run.ckpt \(config\): 'data.debias.dacs' was "
                                          r"removed: DACS .* method.name=self_training"):
        load_config(base_text=OLD_RUN % "true", base_name="run.ckpt (config)")


def test_a_removed_section_in_a_user_yaml_is_refused_even_when_off(tmp_path):
    (tmp_path / "c.yaml").write_text(OLD_RUN % "false")
    with pytest.raises(ConfigError, match=r"c.yaml: 'data.debias.dacs.*' was removed"):
        load_config(tmp_path / "c.yaml")
