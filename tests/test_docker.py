"""The images and the compose file, checked without a Docker engine: what they copy exists, what
they run is a real `sysmon-blt` command line, the ports line up with what those commands serve,
every SYSMON_BLT_* variable named is a real configuration key, the image runs as a user without
privileges and has a health check, every pip install is pinned, and compose's dependencies exist.

A small Dockerfile line parser and a few checkers, each returning the problems it finds; every
checker is also shown a bad snippet, so a check that stops checking fails too.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from plugin.cli import COMMANDS, build_parser
from plugin.config import ENV_PREFIX, _TYPES, env_var, load_config
from plugin.errors import UsageError
from plugin.memory import LAUNCHER_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
COMPOSE = DOCKER / "compose.yaml"
KAFKA_ENV = ENV_PREFIX + "KAFKA_"
TORCH = "2.13.0"  # the torch release the project is tested with (.ci/run installs it too)


# ---------------------------------------------------------------- a Dockerfile line parser

@dataclass
class Instruction:
    op: str  # FROM, COPY, RUN, ... (upper case)
    args: str  # the rest of the instruction, continuation lines joined, flags removed
    flags: dict[str, str] = field(default_factory=dict)  # --from=build, --interval=30s, ...
    line: int = 0
    stage: int = 0  # index of the FROM it belongs to

    def exec_form(self) -> list[str] | None:
        """The JSON array of the exec form (ENTRYPOINT, CMD, HEALTHCHECK CMD), else None."""
        text = self.args.removeprefix("CMD").strip() if self.op == "HEALTHCHECK" else self.args
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments and blank lines dropped (inside continuations too),
    backslash continuations joined, leading --flags split off, each tagged with its stage."""
    out: list[Instruction] = []
    buf: list[str] = []
    first = 0
    stage = -1
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            first = no
        cont = stripped.endswith("\\")
        buf.append(stripped[:-1].strip() if cont else stripped)
        if cont:
            continue
        op, _, rest = " ".join(buf).partition(" ")
        buf = []
        op = op.upper()
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, rest, flags, first, max(stage, 0)))
    assert not buf, "a continuation runs off the end of the file"
    return out


def final_stage(instrs: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instrs)
    return [i for i in instrs if i.stage == last]


def stage_names(instrs: list[Instruction]) -> dict[str, int]:
    names = {}
    for i in instrs:
        if i.op == "FROM":
            parts = i.args.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                names[parts[2]] = i.stage
    return names


def env_of(instrs: list[Instruction]) -> dict[str, str]:
    """ENV of these instructions (K=V pairs or the old `ENV K V` form)."""
    env: dict[str, str] = {}
    for i in instrs:
        if i.op != "ENV":
            continue
        tokens = shlex.split(i.args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
        else:
            env.update(t.split("=", 1) for t in tokens)
    return env


# ---------------------------------------------------------------- checkers (problems out)

def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    return [ln.strip().rstrip("/") for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#") and not ln.startswith("!")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `rel` (or a folder above it) out."""
    parts = Path(rel).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pat in patterns:
        plain = pat.removeprefix("**/")
        for pre in prefixes:
            if fnmatch.fnmatchcase(pre, pat):
                return True
            if pat.startswith("**/") and (fnmatch.fnmatchcase(pre, plain)
                                          or fnmatch.fnmatchcase(pre.split("/")[-1], plain)):
                return True
    return False


def copy_problems(instrs: list[Instruction], root: Path) -> list[str]:
    problems = []
    names = stage_names(instrs)
    patterns = dockerignore_patterns(root)
    for i in instrs:
        if i.op not in ("COPY", "ADD"):
            continue
        if "from" in i.flags:
            if i.flags["from"] not in names or names[i.flags["from"]] >= i.stage:
                problems.append(f"line {i.line}: COPY --from={i.flags['from']}: no earlier stage "
                                "of that name")
            continue
        args = i.exec_form() or shlex.split(i.args)
        for src in args[:-1]:
            if not (root / src).exists():
                problems.append(f"line {i.line}: {i.op} {src}: not in the project")
            elif ignored(src.rstrip("/"), patterns):
                problems.append(f"line {i.line}: {i.op} {src}: left out of the build context "
                                "by .dockerignore")
    return problems


def user_problems(instrs: list[Instruction]) -> list[str]:
    users = [i.args.split(":")[0].strip() for i in final_stage(instrs) if i.op == "USER"]
    if not users:
        return ["no USER in the final stage: the image would run as root"]
    if users[-1] in ("root", "0"):
        return [f"the final USER is {users[-1]}: the image would run as root"]
    return []


def healthcheck_problems(instrs: list[Instruction]) -> list[str]:
    checks = [i for i in final_stage(instrs) if i.op == "HEALTHCHECK"]
    if not checks:
        return ["no HEALTHCHECK in the final stage"]
    if checks[-1].args.strip().upper() == "NONE":
        return ["HEALTHCHECK NONE"]
    if not checks[-1].args.startswith("CMD"):
        return [f"line {checks[-1].line}: HEALTHCHECK without CMD"]
    return []


def health_url(instrs: list[Instruction]) -> str | None:
    """The URL the image's health check asks: written in the command, or in an ENV variable the
    command reads."""
    checks = [i for i in final_stage(instrs) if i.op == "HEALTHCHECK"]
    if not checks:
        return None
    text = checks[-1].args
    urls = re.findall(r"https?://[^'\"\s)]+", text)
    for name, value in env_of(final_stage(instrs)).items():
        if name in text:
            urls += re.findall(r"https?://[^'\"\s)]+", value)
    return urls[0] if urls else None


def split_shell(command: str) -> list[list[str]]:
    """A shell command line as its simple commands (split at &&, ||, ;, |)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for tok in lexer:
        if tok and set(tok) <= set("&|;()<>"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        commands.append(current)
    return commands


PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
                     "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix",
                     "--root", "--upgrade-strategy", "--platform", "--python-version",
                     "--only-binary", "--no-binary", "--progress-bar", "--src", "--report"}


@dataclass
class PipInstall:
    requirements: list[str]
    options: dict[str, list[str]]
    line: int


def pip_installs(instrs: list[Instruction]) -> list[PipInstall]:
    found = []
    for i in instrs:
        if i.op != "RUN":
            continue
        for cmd in split_shell(i.args):
            for n, tok in enumerate(cmd):
                is_pip = tok in ("pip", "pip3") or tok.endswith("/pip") or tok.endswith("/pip3")
                is_module = tok.startswith("python") and cmd[n + 1:n + 3] == ["-m", "pip"]
                at = n + 1 if is_pip else n + 3 if is_module else None
                if at is None or cmd[at:at + 1] != ["install"]:
                    continue
                reqs, opts = [], {}
                rest = iter(cmd[at + 1:])
                for arg in rest:
                    if arg.startswith("-"):
                        name, eq, value = arg.partition("=")
                        if not eq and name in PIP_VALUE_OPTIONS:
                            value = next(rest, "")
                        opts.setdefault(name, []).append(value)
                    else:
                        reqs.append(arg)
                found.append(PipInstall(reqs, opts, i.line))
                break
    return found


def copied_source(instrs: list[Instruction], image_path: str, root: Path) -> Path | None:
    """The project file a COPY put at `image_path` (before it is used)."""
    for i in instrs:
        if i.op != "COPY" or "from" in i.flags:
            continue
        args = i.exec_form() or shlex.split(i.args)
        *srcs, dest = args
        for src in srcs:
            target = dest if not dest.endswith("/") else dest + Path(src).name
            if target == image_path:
                return root / src
    return None


def pinned_lines(path: Path) -> tuple[dict[str, str], list[str]]:
    """A constraints / requirements file: {name: version} of its == pins, and its other lines."""
    pins, loose = {}, []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            loose.append(line)
            continue
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
            pins[req.name.lower()] = specs[0].version
        else:
            loose.append(line)
    return pins, loose


def pip_problems(instrs: list[Instruction], root: Path) -> list[str]:
    """Every pip install pinned: a named requirement with ==, or pinned by its constraints file
    (which must pin everything it names); a local project only with a constraints file."""
    problems = []
    for pi in pip_installs(instrs):
        pins: dict[str, str] = {}
        for opt in ("-c", "--constraint", "-r", "--requirement"):
            for image_path in pi.options.get(opt, []):
                src = copied_source(instrs, image_path, root)
                if src is None or not src.is_file():
                    problems.append(f"line {pi.line}: {opt} {image_path}: no COPY puts a project "
                                    "file there")
                    continue
                file_pins, loose = pinned_lines(src)
                problems += [f"{src.relative_to(root)}: {ln!r} is not pinned with =="
                             for ln in loose]
                pins.update(file_pins)
        if "--extra-index-url" in pi.options:
            problems.append(f"line {pi.line}: --extra-index-url mixes indexes (a name on both "
                            "could come from either)")
        if not pi.requirements and not any(o in pi.options for o in ("-r", "--requirement")):
            problems.append(f"line {pi.line}: pip install of nothing")
        for req in pi.requirements:
            if req.startswith((".", "/")):
                if not any(o in pi.options for o in ("-c", "--constraint")):
                    problems.append(f"line {pi.line}: pip install {req} without --constraint: its "
                                    "dependencies would float")
                continue
            try:
                r = Requirement(req)
            except InvalidRequirement:
                problems.append(f"line {pi.line}: {req!r} is not a requirement")
                continue
            specs = list(r.specifier)
            exact = len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version
            if not exact and r.name.lower() not in pins:
                problems.append(f"line {pi.line}: {req} is not pinned (== or a constraints file)")
    return problems


def cli_problem(argv: list[str]) -> str | None:
    """None when `sysmon-blt ARGV` parses with the real parser (and names a real command), else
    what argparse said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else f"sysmon-blt {' '.join(argv)}: {err.getvalue().strip()}"
    if args.command is not None and args.command not in COMMANDS:
        return f"sysmon-blt {args.command}: no such command"
    return None


def parse_cli(argv: list[str]) -> argparse.Namespace:
    assert cli_problem(argv) is None, cli_problem(argv)
    return build_parser().parse_args(argv)


def env_name_problem(name: str) -> str | None:
    """None when a SYSMON_BLT_* name is one `load_config` reads (the bare prefixes stand for the
    placeholders SYSMON_BLT_<KEY> and SYSMON_BLT_KAFKA_<SETTING>)."""
    if name in (ENV_PREFIX, KAFKA_ENV) or name.startswith(KAFKA_ENV) or name in LAUNCHER_VARIABLES:
        return None
    key = name[len(ENV_PREFIX):].lower()
    if key not in _TYPES or env_var(key) != name:
        return (f"{name}: not a configuration key's variable (see the README's configuration "
                "reference)")
    return None


def env_problems(env: dict[str, object]) -> list[str]:
    """Names and values: the SYSMON_BLT_* part of `env` as `load_config` would read it."""
    ours = {k: interpolate(str(v)) for k, v in env.items() if k.startswith(ENV_PREFIX)}
    problems = [p for k in ours if (p := env_name_problem(k))]
    if not problems:
        try:
            load_config(None, {}, environ=ours)
        except UsageError as exc:
            problems.append(str(exc))
    return problems


def env_names_in_text(text: str) -> set[str]:
    return set(re.findall(r"\b" + ENV_PREFIX + r"[A-Z0-9_]*", text))


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} as their defaults ($$ is a literal $)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?]([^}]*))?\}", lambda m: m.group(1) or "",
                  value).replace("$$", "$")


def depends_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name}: depends_on {dep}, which is not a service")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends_on {dep}: unknown condition {cond}")
            if cond == "service_healthy" and not has_healthcheck(services[dep]):
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            if services[dep].get("profiles") and not set(services[dep]["profiles"]) >= set(
                    svc.get("profiles") or ["<default>"]):
                problems.append(f"{name}: depends_on {dep}, which only runs under profiles "
                                f"{services[dep]['profiles']}")
    return problems


def has_healthcheck(svc: dict) -> bool:
    hc = svc.get("healthcheck") or {}
    if hc.get("disable"):
        return False
    return bool(hc.get("test")) or is_app(svc)  # our image brings its own HEALTHCHECK


def kraft_problems(env: dict[str, object]) -> list[str]:
    """A single-node KRaft configuration that holds together."""
    env = {k: str(v) for k, v in env.items()}
    needed = ("KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
              "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
              "KAFKA_CONTROLLER_QUORUM_VOTERS",
              "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
    missing = [k for k in needed if k not in env]
    if missing:
        return [f"kafka: KRaft needs {', '.join(missing)}"]
    problems = []
    if set(env["KAFKA_PROCESS_ROLES"].split(",")) != {"broker", "controller"}:
        problems.append("kafka: a single node must be broker and controller")
    listeners = {u.split("://")[0]: u.split("://")[1] for u in env["KAFKA_LISTENERS"].split(",")}
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    if controller not in listeners:
        problems.append(f"kafka: controller listener {controller} is not in KAFKA_LISTENERS")
    for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        node, _, hostport = voter.partition("@")
        if node != env["KAFKA_NODE_ID"]:
            problems.append(f"kafka: quorum voter {voter} is not node {env['KAFKA_NODE_ID']}")
        port = hostport.rpartition(":")[2]
        if controller in listeners and port != listeners[controller].rpartition(":")[2]:
            problems.append(f"kafka: quorum voter {voter} is not the controller listener's port")
    advertised = {u.split("://")[0] for u in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in set(listeners) | advertised:
        if name not in protocols:
            problems.append(f"kafka: listener {name} has no security protocol")
    if controller in advertised:
        problems.append("kafka: the controller listener must not be advertised to clients")
    return problems


def advertised(env: dict[str, object]) -> set[str]:
    return {u.split("://")[1] for u in str(env.get("KAFKA_ADVERTISED_LISTENERS", "")).split(",")}


def container_ports(svc: dict) -> set[int]:
    out = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:
            out.add(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def is_app(svc: dict) -> bool:
    """A service running our image (built from docker/ or tagged sysmon-blt)."""
    build = svc.get("build") or {}
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return (Path(dockerfile).name in DOCKERFILES
            or str(svc.get("image", "")).startswith("sysmon-blt"))


def served_port(args: argparse.Namespace) -> tuple[str, int] | None:
    """(host, port) the command listens on for HTTP, or None."""
    from plugin.service.server import parse_listen

    if args.command == "consume" and args.serve:
        return parse_listen(args.serve)
    if args.command == "serve":
        return args.host, args.port
    return None


def healthcheck_code(test: list[str]) -> str:
    """The Python source of a `python -c` health check."""
    assert test[0] in ("CMD", "python"), test
    argv = test[1:] if test[0] == "CMD" else test
    assert argv[0] == "python" and argv[1] == "-c", argv
    return argv[2]


# ---------------------------------------------------------------- fixtures

def load_dockerfile(name: str) -> list[Instruction]:
    return parse_dockerfile((DOCKER / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


# ---------------------------------------------------------------- the Dockerfiles

@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_existing_files_and_stages(name):
    assert copy_problems(load_dockerfile(name), ROOT) == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_a_user_without_privileges(name):
    assert user_problems(load_dockerfile(name)) == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_has_a_healthcheck_on_healthz_of_the_exposed_port(name):
    instrs = load_dockerfile(name)
    assert healthcheck_problems(instrs) == []
    url = urlparse(health_url(instrs) or "")
    assert url.path == "/healthz", f"{name}: the health check asks {url.geturl()!r}"
    exposed = {int(p.split("/")[0]) for i in final_stage(instrs) if i.op == "EXPOSE"
               for p in i.args.split()}
    assert url.port in exposed, f"{name}: health check port {url.port}, EXPOSE {exposed}"
    # `serve` answers on its default port there, and so does the compose consumer (below)
    assert parse_cli(["serve"]).port in exposed


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_pins_every_pip_install(name):
    assert pip_problems(load_dockerfile(name), ROOT) == []


@pytest.mark.parametrize("name,variant", [("Dockerfile", "cpu"), ("Dockerfile.cuda", "cu")])
def test_torch_comes_from_the_pytorch_index_at_the_tested_version(name, variant):
    instrs = load_dockerfile(name)
    torch = [pi for pi in pip_installs(instrs) if f"torch=={TORCH}" in pi.requirements]
    assert torch, f"{name}: no `pip install torch=={TORCH}`"
    index = torch[0].options.get("--index-url", torch[0].options.get("-i", [""]))[0]
    assert index.startswith("https://download.pytorch.org/whl/" + variant), index
    if variant == "cu":  # the wheel's CUDA release is the base image's
        base = [i.args.split()[0] for i in instrs if i.op == "FROM"]
        assert all(b.startswith("nvidia/cuda:") and "runtime" in b for b in base), base
        major, minor = base[-1].split(":")[1].split(".")[:2]
        assert index.rstrip("/").endswith(f"/cu{major}{minor}"), (base[-1], index)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"torch=={TORCH}" in ci, "the images and CI install different torch releases"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_entrypoint_and_cmd_are_real_commands(name):
    instrs = final_stage(load_dockerfile(name))
    entry = [i.exec_form() for i in instrs if i.op == "ENTRYPOINT"]
    assert entry and entry[-1] == ["sysmon-blt"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "sysmon-blt" in scripts
    for cmd in [i.exec_form() for i in instrs if i.op == "CMD"]:
        assert cmd is not None and cli_problem(cmd) is None, cli_problem(cmd or [])
    assert "/data" in " ".join(i.args for i in instrs if i.op == "VOLUME")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_names_only_real_config_variables(name):
    text = (DOCKER / name).read_text()
    assert [p for n in sorted(env_names_in_text(text)) if (p := env_name_problem(n))] == []
    assert env_problems(env_of(load_dockerfile(name))) == []


def test_cuda_image_installs_the_gpu_extra():
    installs = pip_installs(load_dockerfile("Dockerfile.cuda"))
    assert any(r.startswith(".[") and "gpu" in r for pi in installs for r in pi.requirements)


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    pins, loose = pinned_lines(DOCKER / "constraints.txt")
    assert loose == []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"],
              *project["project"]["optional-dependencies"]["gpu"],
              *project["build-system"]["requires"]]
    for spec in wanted:
        req = Requirement(spec)
        name = req.name.lower()
        assert name in pins, f"{name} (pyproject.toml) is not pinned in docker/constraints.txt"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"docker/constraints.txt pins {name}=={pins[name]}, outside pyproject's "
            f"{req.specifier}")
    assert pins["torch"] == TORCH


# ---------------------------------------------------------------- compose

def test_compose_services_and_profiles(services):
    assert {"kafka", "consumer", "simulator", "import", "postgres"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert not services["kafka"]["image"].endswith(":latest")
    assert services["postgres"]["image"].split(":")[1].startswith("15")
    assert "scaleout" in services["postgres"].get("profiles", [])
    for name in ("consumer", "simulator"):
        assert not services[name].get("profiles"), f"{name} runs in the default profile"


def test_compose_depends_on_targets_exist(services):
    assert depends_problems(services) == []


def test_compose_kafka_is_a_working_kraft_node(services):
    assert kraft_problems(services["kafka"]["environment"]) == []


def test_compose_commands_are_real_and_reach_kafka(services):
    listeners = advertised(services["kafka"]["environment"])
    init = json.dumps(services.get("kafka-init", {}).get("command", ""))
    auto_create = str(services["kafka"]["environment"].get("KAFKA_AUTO_CREATE_TOPICS_ENABLE",
                                                          "true")).lower() == "true"
    seen = set()
    for name, svc in services.items():
        if not is_app(svc) or "entrypoint" in svc:
            continue
        argv = [str(a) for a in svc["command"]]
        args = parse_cli(argv)
        seen.add(args.command)
        broker = getattr(args, "bootstrap", None) or getattr(args, "kafka", None)
        if broker:
            assert broker in listeners, (
                f"{name}: {broker} is not an advertised listener {listeners}")
            assert broker.split(":")[0] in services, f"{name}: {broker} is not a service"
            topics = [*(args.topic if isinstance(args.topic, list) else [args.topic]),
                      getattr(args, "alerts_topic", None)]
            for t in filter(None, topics):
                assert auto_create or re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", init), (
                    f"{name}: topic {t} is created by no one (auto-create is off)")
    assert {"consume", "simulate", "import"} <= seen


def test_compose_ports_match_what_the_commands_serve(services):
    exposed = {int(p.split("/")[0]) for i in final_stage(load_dockerfile("Dockerfile"))
               if i.op == "EXPOSE" for p in i.args.split()}
    for name, svc in services.items():
        if not is_app(svc):
            continue
        served = served_port(parse_cli([str(a) for a in svc["command"]]))
        hc = svc.get("healthcheck") or {}
        if served is None:
            assert not container_ports(svc), f"{name} publishes ports but serves nothing"
            assert hc.get("disable"), f"{name} serves no HTTP: the image's health check would fail"
            continue
        host, port = served
        assert host == "0.0.0.0", f"{name}: listening on {host} is unreachable from outside"
        assert container_ports(svc) == {port}, (
            f"{name}: publishes {container_ports(svc)}, serves {port}")
        assert port in exposed
        if not hc.get("disable"):
            url = re.findall(r"https?://[^'\"\s)]+", " ".join(map(str, hc.get("test", []))))
            assert url and urlparse(url[0]).port == port and urlparse(url[0]).path == "/healthz"


def test_compose_names_only_real_config_variables(services):
    text = COMPOSE.read_text()
    assert [p for n in sorted(env_names_in_text(text)) if (p := env_name_problem(n))] == []
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        assert env_problems(env) == [], name


def test_compose_volumes_builds_and_databases(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        mounts = {}
        for v in svc.get("volumes") or []:
            src, target = str(v).split(":")[:2]
            if not src.startswith((".", "/", "$")):
                assert src in declared, f"{name}: named volume {src} is not declared"
            mounts[target] = src
        build = svc.get("build")
        if isinstance(build, dict):
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context.is_dir() and (context / build["dockerfile"]).is_file(), name
        if is_app(svc):
            db = getattr(parse_cli([str(a) for a in svc["command"]]), "db", None)
            if db and db.startswith("ducklake:"):  # the catalog is a service; its data a volume
                data = (svc.get("environment") or {}).get("SYSMON_BLT_LAKE_DATA_PATH", "")
                assert data and any(Path(data).is_relative_to(t) for t in mounts), (
                    f"{name}: the lake's data path {data!r} is on no volume")
                host = re.search(r"host=(\S+)", db)
                assert host and host.group(1) in services, f"{name}: no catalog service in {db}"
                assert "password" not in db, f"{name}: a password in --db is logged"
            elif db:
                assert any(Path(db).is_relative_to(t) for t in mounts), (
                    f"{name}: --db {db} is on no volume and would be lost with the container")


# ---------------------------------------------------------------- the health checks run

class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture()
def health_server():
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run_check(code: str, env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=30,
                          capture_output=True).returncode


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False)])
def test_the_image_healthcheck_fails_when_healthz_is_not_ready(health_server, status, healthy,
                                                                 monkeypatch):
    monkeypatch.setattr(_Health, "status", status)
    instrs = load_dockerfile("Dockerfile")
    check = [i for i in final_stage(instrs) if i.op == "HEALTHCHECK"][-1].exec_form()
    url = health_url(instrs).replace(":8080/", f":{health_server.server_port}/")
    env = {**{k: v for k, v in env_of(final_stage(instrs)).items() if k != "PATH"},
           "HEALTHCHECK_URL": url}
    assert (_run_check(healthcheck_code(check), env) == 0) is healthy
    hc = yaml.safe_load(COMPOSE.read_text())["services"]["consumer"]["healthcheck"]["test"]
    code = healthcheck_code(hc).replace(":8080/", f":{health_server.server_port}/")
    assert (_run_check(code, {}) == 0) is healthy


# ---------------------------------------------------------------- the checkers catch bad input

BAD_DOCKERFILE = """\
FROM python:3.11-slim AS build
# a comment inside
RUN pip install torch \\
    # a comment inside a continuation
    numpy==2.0
RUN pip install . && pip install --extra-index-url https://example.invalid/simple "duckdb>=1"
COPY no-such-file.txt /app/
COPY --from=nowhere /opt/venv /opt/venv
FROM python:3.11-slim
ENV SYSMON_BLT_NOPE=1 SYSMON_BLT_WORKERS=-1
USER root
ENTRYPOINT ["sysmon-blt"]
CMD ["consume", "--topic", "sysmon"]
"""


def test_parser_joins_continuations_and_drops_comments():
    instrs = parse_dockerfile(BAD_DOCKERFILE)
    assert [i.op for i in instrs] == ["FROM", "RUN", "RUN", "COPY", "COPY", "FROM", "ENV", "USER",
                                      "ENTRYPOINT", "CMD"]
    assert instrs[1].args == "pip install torch numpy==2.0" and instrs[1].line == 3
    assert instrs[4].flags == {"from": "nowhere"} and instrs[4].args == "/opt/venv /opt/venv"
    assert [i.stage for i in instrs] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert stage_names(instrs) == {"build": 0}


def test_checkers_catch_a_bad_dockerfile():
    instrs = parse_dockerfile(BAD_DOCKERFILE)
    pip = pip_problems(instrs, ROOT)
    assert any("torch is not pinned" in p for p in pip)
    assert any("pip install . without --constraint" in p for p in pip)
    assert any("duckdb>=1 is not pinned" in p for p in pip)
    assert any("--extra-index-url" in p for p in pip)
    assert not any("numpy" in p for p in pip)
    copies = copy_problems(instrs, ROOT)
    assert any("no-such-file.txt" in p for p in copies) and any("nowhere" in p for p in copies)
    assert user_problems(instrs)
    assert healthcheck_problems(instrs) == ["no HEALTHCHECK in the final stage"]
    assert env_name_problem("SYSMON_BLT_NOPE") and env_name_problem("SYSMON_BLT_WORKERS") is None
    assert env_problems(env_of(final_stage(instrs)))
    assert env_problems({"SYSMON_BLT_WORKERS": "-1"})  # a real key, a value it refuses
    assert env_problems({"SYSMON_BLT_SUPPRESS": "x"})  # a key only YAML can hold
    assert cli_problem(["consume", "--topic", "sysmon"])  # --bootstrap is required
    assert user_problems(parse_dockerfile("FROM x\nUSER 0:0\n"))
    # the last stage counts
    assert user_problems(parse_dockerfile("FROM x AS a\nUSER app\nFROM y\n"))
    assert user_problems(parse_dockerfile("FROM x\nUSER 10001:10001\n")) == []


def test_cli_problem_knows_commands_and_flags():
    assert cli_problem(["simulate", "--events", "5", "--kafka", "k:9092", "--topic", "t"]) is None
    assert cli_problem(["--help"]) is None
    assert "invalid choice" in cli_problem(["consumer", "--bootstrap", "k:9092"])
    assert "unrecognized" in cli_problem(["simulate", "--events", "5", "--out", "-", "--eps", "3"])


def test_checkers_catch_bad_compose():
    services = {
        "a": {"depends_on": ["ghost"]},
        "b": {"depends_on": {"pg": {"condition": "service_healthy"}}},
        "pg": {"image": "postgres:15", "profiles": ["scaleout"]},
    }
    problems = depends_problems(services)
    assert any("ghost" in p for p in problems)
    assert any("no healthcheck" in p for p in problems)
    assert any("only runs under profiles" in p for p in problems)
    good = {"kafka": {"image": "apache/kafka:4.0.0", "healthcheck": {"test": ["CMD", "true"]}},
            "c": {"depends_on": {"kafka": {"condition": "service_healthy"}}}}
    assert depends_problems(good) == []
    kraft = {"KAFKA_NODE_ID": 1, "KAFKA_PROCESS_ROLES": "broker,controller",
             "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
             "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
             "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
             "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
             "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"}
    assert kraft_problems(kraft) == []
    assert kraft_problems({**kraft, "KAFKA_CONTROLLER_QUORUM_VOTERS": "2@kafka:9092"})
    assert kraft_problems({k: v for k, v in kraft.items() if k != "KAFKA_NODE_ID"})
    assert interpolate("${POSTGRES_PASSWORD:-change-me}") == "change-me"
    assert env_names_in_text("use SYSMON_BLT_KAFKA_<SETTING> or SYSMON_BLT_DBX") == {
        "SYSMON_BLT_KAFKA_", "SYSMON_BLT_DBX"}
    assert env_name_problem("SYSMON_BLT_DBX") and env_name_problem("SYSMON_BLT_KAFKA_") is None


def test_ignored_follows_dockerignore_patterns():
    pats = [".venv", "**/__pycache__", "tests", "*.duckdb"]
    assert ignored("tests/test_x.py", pats) and ignored("plugin/x/__pycache__/a.pyc", pats)
    assert ignored("case.duckdb", pats) and not ignored("plugin/config.py", pats)
