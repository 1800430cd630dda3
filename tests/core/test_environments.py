"""The environments exatrack builds for itself. A broken install step used to pass CI, which only ever
used a cached environment, and failed every new user's first command: here every command line of a
build is run against the pinned installers, and a build that cannot install says which package."""

import subprocess
import sys

import pytest

from exatrack.core import environments
from exatrack.core.basics import ExatrackError
from exatrack.core.environments import Environment


def run(line: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(line, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("role", ["serving"])
def test_every_build_step_is_a_command_line_the_pinned_installers_accept(role, tmp_path):
    """The venv and its pip are made for real; every install step then runs with --dry-run --no-deps,
    which parses the whole command line and finds each pinned package. Resolving the lock needs the
    packages installed: .ci/run builds every environment from an empty cache for that."""
    steps = environments.commands(environments.chosen(role), tmp_path / "env")
    for what, line in steps[:2]:
        assert run(line).returncode == 0, what
    for what, line in steps[2:-1]:
        done = run(line + ["--dry-run"] + (["--no-deps"] if "install" in line[:4] else []))
        assert done.returncode == 0, f"{what}: {' '.join(line)}\n{done.stderr[-2000:]}"


def test_the_installers_are_the_pinned_ones():
    assert run([environments.uv(), "--version"]).stdout.split()[1] == pinned("uv")
    pip = run([sys.executable, "-m", "pip", "--version"]).stdout.split()[1]
    assert f"pip=={pip}" == environments.PIP == f"pip=={pinned('pip')}"


def pinned(package: str) -> str:
    for line in environments.PROJECT_LOCK.read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==")[1].strip()
    raise AssertionError(f"{package} is not in {environments.PROJECT_LOCK}")


@pytest.mark.parametrize("environment", sorted(set(environments.DEFAULTS.values()), key=lambda e: e.lock),
                         ids=lambda e: e.lock)
def test_each_lock_holds_the_versions_its_environment_asks_for(environment):
    """A lock left behind after a version changed would make every build fail (or install the old one)."""
    lock = dict(line.split("==", 1) for line in (environments.LOCKS / environment.lock).read_text().splitlines()
                if "==" in line)
    for how, packages in environment.steps:
        for package in packages if how in ("pip", "uv") else ():  # uv-no-deps: pinned in the step, alone
            if "==" not in package:
                assert package.split(">")[0].split("<")[0] in lock, f"{environment.lock} lacks {package}"
                continue
            name, version = package.split("==")
            assert lock[name].split("+")[0] == version, f"{environment.lock}: {name}=={lock[name]}, asked {version}"


def test_a_build_that_cannot_install_names_the_package_and_is_not_kept(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("six==9.9.9\n")  # no such release: what a lock naming a yanked version meets
    broken = Environment("serving", (("uv", ("six",)),), lock=str(lock), check="import six")
    folder = tmp_path / "env"
    with pytest.raises(ExatrackError) as refused:
        environments.build_environment(broken, folder)
    message = refused.value.message
    assert "install six" in message and "six==9.9.9" in message and "\n" not in message
    assert not (folder / ".ready").exists()


def test_a_user_spec_installs_as_given_first_package_through_pip(monkeypatch):
    monkeypatch.setenv("EXATRACK_SERVING_SPEC", "torch==2.13.0 vllm==0.26.0")
    chosen = environments.chosen("serving")
    assert chosen.steps == (("pip", ("torch==2.13.0",)), ("uv", ("vllm==0.26.0",))) and chosen.lock is None
    assert chosen.spec == "torch==2.13.0 vllm==0.26.0" and chosen.folder() != environments.SERVING_CPU.folder()


def test_each_environments_vllm_keeps_its_own_cache(tmp_path, monkeypatch):
    """The serving and the grader environments' vLLMs write the same modelinfos file names with their
    own sources' hashes: shared, each start after the other's inspected the model class again."""
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    serving_env, grader_env = (environments.child_env(tmp_path / role / "bin" / "python") for role in ("serving", "grader"))
    assert serving_env["VLLM_CACHE_ROOT"] != grader_env["VLLM_CACHE_ROOT"]
    assert serving_env["VLLM_CACHE_ROOT"] == environments.child_env(tmp_path / "serving" / "bin" / "python")["VLLM_CACHE_ROOT"]
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "mine"))  # a user's own choice wins
    assert environments.child_env(tmp_path / "serving" / "bin" / "python")["VLLM_CACHE_ROOT"] == str(tmp_path / "mine")
