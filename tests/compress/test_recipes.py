import pytest

from exatrack.compress import recipes
from exatrack.core.basics import ExatrackError

GPTQ = ["w8a8", "w4a16", "w8a16"]


def test_every_shipped_recipe_loads_and_renders_with_its_defaults():
    names = recipes.available()
    assert {"w8a8", "w4a16", "w8a16", "fp8_dynamic", "fp8_static", "rtn_w8a8"} <= set(names)
    for name in names:
        recipe = recipes.load(name)
        rendered = recipe.render(recipe.resolve_params({}))
        assert "${" not in str(rendered), name


@pytest.mark.parametrize("name", GPTQ)
def test_damp_is_substituted_as_dampening_frac_with_its_type(name):
    recipe = recipes.load(name)
    rendered = recipe.render(recipe.resolve_params({"damp": "0.02", "ignore": "lm_head,re:.*layers.0.mlp.*"}))
    gptq = rendered["quant_stage"]["quant_modifiers"]["GPTQModifier"]
    assert gptq["dampening_frac"] == 0.02
    assert gptq["ignore"] == ["lm_head", "re:.*layers.0.mlp.*"]


@pytest.mark.parametrize("damp", ["0", "1", "1.5", "-0.1"])
def test_damp_outside_the_open_unit_interval_is_refused(damp):
    with pytest.raises(ExatrackError, match=r"damp=.* is out of range: .* must be > 0 and < 1"):
        recipes.load("w8a8").resolve_params({"damp": damp})


def test_a_parameter_the_recipe_lacks_is_named_with_the_ones_it_has():
    with pytest.raises(ExatrackError, match="has no parameter damp; its parameters are: ignore"):
        recipes.load("fp8_dynamic").resolve_params({"damp": "0.02"})


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ExatrackError, match="unknown recipe 'w3a3'; choose one of .*w8a8"):
        recipes.load("w3a3")


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("recipe:\n  quant_stage: [unclosed\n")
    with pytest.raises(ExatrackError, match=r"broken.yaml line \d+ is not valid YAML"):
        recipes.load(str(bad))


def test_placeholder_without_a_declared_parameter_is_refused(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("params: {damp: {default: 0.01}}\nrecipe:\n  s: {GPTQModifier: {dampening_frac: \"${dmap}\"}}\n")
    with pytest.raises(ExatrackError, match=r"uses \$\{dmap\}"):
        recipes.load(str(bad))
