"""Compression recipes are data: a YAML file per recipe under recipes/, holding an llmcompressor recipe
with ${name} placeholders and the parameters that fill them (defaults, ranges, choices).

Rendering substitutes typed values (a float stays a float, a list a list), so the recipe logged to
MLflow is exactly what llmcompressor ran.
"""

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from exatrack.core.basics import ExatrackError

# The recipes shipped with the package (in a checkout, a link to the top-level recipes/ folder).
PROJECT_RECIPES = Path(__file__).resolve().parent / "recipes"
PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")
BOUND = {"gt": operator.gt, "lt": operator.lt, "ge": operator.ge, "le": operator.le}
SYMBOL = {"gt": ">", "lt": "<", "ge": ">=", "le": "<="}

# Parameters of every calibrated recipe; they steer the calibration data, not the recipe body.
CALIBRATION_PARAMS = {
    "num_samples": {"default": 512, "ge": 1, "help": "calibration samples"},
    "max_seq_len": {"default": 2048, "ge": 16, "help": "tokens per calibration sample"},
    "seed": {"default": 0, "help": "seed for choosing calibration samples"},
    "gptq_path": {"default": "fast", "choices": ["fast", "exact"],
                  "help": "calibration path (compress/gptq.py): fast (sdpa attention, bf16 Hessian products on the GPU; "
                          "judged by quality) or exact (llmcompressor's numbers, bit for bit)"},
}


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    calibrate: bool
    params: dict
    body: dict
    requires: dict  # {"compute_capability": 9.0}: where vLLM serves it; {"packages": {...}}: where it is written

    def resolve_params(self, given: dict) -> dict:
        """Recipe defaults overlaid with the user's values, each checked; None means 'use the default'.

        Calibration values are accepted by every recipe (entry points always pass them) and dropped by
        data-free ones.
        """
        specs = {**self.params, **(CALIBRATION_PARAMS if self.calibrate else {})}
        given = {k: v for k, v in given.items() if k in specs or k not in CALIBRATION_PARAMS}
        return resolve_values(specs, given, f"recipe '{self.name}'", "see `exatrack recipes`")

    def render(self, values: dict) -> dict:
        return substitute(self.body, values)

    def check_modifiers(self, values: dict) -> list:
        """llmcompressor builds the rendered recipe's modifiers here, before any model loads: a misspelt
        modifier or argument fails in one line, and a recipe whose stages it does not recognise (their
        keys must end in _stage and _modifiers) no longer writes an uncompressed checkpoint silently.
        Returns them, for the checks against the model's modules."""
        from llmcompressor.recipe import Recipe as Built

        try:
            built = Built.from_dict(self.render(values))
        except (ValueError, TypeError, KeyError) as err:  # pydantic's ValidationError is a ValueError
            why = "; ".join(line.strip() for line in str(err).splitlines()[:3])
            raise ExatrackError(f"recipe file {self.path}: llmcompressor cannot build it ({why}); "
                                "fix the modifier's name or arguments")
        if not built.modifiers:
            raise ExatrackError(f"recipe file {self.path} holds no modifier llmcompressor runs; nest them as "
                                "<name>_stage: {<name>_modifiers: {GPTQModifier: {...}}}, as the shipped recipes do")
        return built.modifiers

    def check_packages(self) -> None:
        """Refuse, before any work, a recipe whose checkpoint format this environment cannot write."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.specifiers import SpecifierSet

        for package, wanted in (self.requires.get("packages") or {}).items():
            try:
                have = version(package)
            except PackageNotFoundError:
                have = None
            if have is None or not SpecifierSet(wanted).contains(have):
                raise ExatrackError(f"recipe '{self.name}' needs {package}{wanted} to write its checkpoint and this "
                                    f"environment has {have or 'none'}; compress it where {package}{wanted} is installed")


def resolve_values(specs: dict, given: dict, owner: str, hint: str) -> dict:
    """Defaults overlaid with the given values, each checked against its spec; None means 'use the default'."""
    unknown = sorted(k for k, v in given.items() if v is not None and k not in specs)
    if unknown:
        raise ExatrackError(f"{owner} has no parameter {', '.join(unknown)}; its parameters are: "
                            f"{', '.join(specs) or 'none'} ({hint})")
    return {k: check_param(k, spec, given.get(k)) for k, spec in specs.items()}


def check_param(name: str, spec: dict, value):
    default = spec.get("default")
    if value is None:
        return default
    if isinstance(default, list) and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(default, bool):
        value = str(value).lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
        try:
            value = type(default)(value)
        except (TypeError, ValueError):
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise ExatrackError(f"{name}={value!r} is not {kind}; pass e.g. {name}={default}")
    limits = [(SYMBOL[k], bound) for k, bound in spec.items() if k in BOUND]
    if not all(BOUND[k](value, spec[k]) for k in spec if k in BOUND):
        allowed = " and ".join(f"{symbol} {bound}" for symbol, bound in limits)
        raise ExatrackError(f"{name}={value} is out of range: {spec.get('help', name)} must be {allowed}, e.g. {default}")
    if "choices" in spec and value not in spec["choices"]:
        raise ExatrackError(f"{name}={value!r} is not one of {spec['choices']}")
    return value


def substitute(node, values: dict):
    if isinstance(node, dict):
        return {k: substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values) for v in node]
    if isinstance(node, str) and (match := PLACEHOLDER.match(node)):
        return values[match.group(1)]
    return node


def recipe_dirs() -> list[Path]:
    return [Path.cwd() / "recipes", PROJECT_RECIPES]


def available() -> dict[str, Path]:
    found = {}
    for folder in reversed(recipe_dirs()):
        found.update({p.stem: p for p in sorted(folder.glob("*.yaml")) if not p.stem.endswith("lanes")})  # lanes files
    return dict(sorted(found.items()))


def load(name_or_path: str) -> Recipe:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        known = available()
        if name_or_path not in known:
            raise ExatrackError(
                f"unknown recipe '{name_or_path}'; choose one of {', '.join(known)} or pass a path to a recipe YAML file"
            )
        path = known[name_or_path]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ExatrackError(f"recipe file {path}{line} is not valid YAML ({problem}); fix the file and run again")
    if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
        raise ExatrackError(f"recipe file {path} needs a 'recipe:' mapping holding an llmcompressor recipe")
    params = data.get("params") or {}
    missing = sorted(set(placeholders(data["recipe"])) - set(params) - set(CALIBRATION_PARAMS))
    if missing:
        raise ExatrackError(f"recipe file {path} uses ${{{missing[0]}}} but declares no such entry under 'params:'")
    return Recipe(
        name=path.stem,
        path=path,
        description=data.get("description", ""),
        calibrate=bool(data.get("calibrate", True)),
        params=params,
        body=data["recipe"],
        requires=data.get("requires") or {},
    )


def placeholders(node) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in placeholders(v)]
    if isinstance(node, list):
        return [p for v in node for p in placeholders(v)]
    match = PLACEHOLDER.match(node) if isinstance(node, str) else None
    return [match.group(1)] if match else []
