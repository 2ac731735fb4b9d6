"""Templates: a recipe built into an immutable read-only layer that sandboxes start from.

`base` is the host's read-only system. Any other template is base plus one layer, mounted
read-only at `/opt/template` in every instance, with the recipe's packages on PATH, PYTHONPATH
and NODE_PATH. A build streams `BuildEvent` lines: `step` (progress), `log` (output of the step)
and exactly one terminal `end`.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import EnvName, EnvValue, TemplateName

TEMPLATE_ROOT = "/opt/template"
"""where an instance sees its template's layer (read-only), and a build writes it"""
BUILD_DIR = "/home/user/build"
"""a build's working directory: relative recipe files land here and are not kept"""
BASE_TEMPLATE = "base"
MAX_FILE_BYTES = 16 << 20

_APT = re.compile(r"[a-z0-9][a-z0-9+.-]{0,127}(=[A-Za-z0-9.+~:-]{1,64})?")
_VERSION_CLAUSE = r"\s*(===|==|>=|<=|!=|~=|>|<)\s*[A-Za-z0-9.*+!_-]{1,64}"
_PIP = re.compile(
    r"\./[A-Za-z0-9._/-]{1,200}\.(whl|tar\.gz|zip)"
    r"|[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9._,-]{1,100}\])?"
    rf"({_VERSION_CLAUSE}(\s*,{_VERSION_CLAUSE}){{0,4}})?"
)
_NPM = re.compile(
    r"\./[A-Za-z0-9._/-]{1,200}\.tgz"
    r"|(@[a-z0-9~-][a-z0-9._~-]{0,99}/)?[a-z0-9~][a-z0-9._~-]{0,99}(@[A-Za-z0-9.^~<>=*|+ -]{1,64})?"
)


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


AptPackage = Annotated[
    str, _matching(_APT, "a Debian package name, optionally =version (e.g. sl, curl=7.88.1-10)")
]
PipRequirement = Annotated[
    str,
    _matching(
        _PIP,
        "a package name with optional [extras] and version clauses (e.g. numpy>=1.26,<3), "
        "or ./file.whl from the recipe's files; no options, URLs or markers",
    ),
]
NpmPackage = Annotated[
    str,
    _matching(
        _NPM, "an npm package, optionally @version (e.g. lodash@4, @scope/pkg), or ./file.tgz from the files"
    ),
]
Command = Annotated[str, StringConstraints(min_length=1, max_length=65536), NoNul]
IndexUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]{1,2000}$")]


class RecipeFile(WireModel):
    """A file the build writes before its steps: a relative path lands in the build's working
    directory (inputs such as wheels, dropped after the build), an absolute one under
    /opt/template (kept in the layer). Text in `content`, or bytes in `content_b64`."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    content: str | None = Field(default=None, max_length=MAX_FILE_BYTES)
    content_b64: str | None = Field(default=None, max_length=MAX_FILE_BYTES * 4 // 3 + 4)
    executable: bool = False

    @field_validator("path")
    @classmethod
    def _path_stays_inside(cls, path: str) -> str:
        normalized = posixpath.normpath(path)
        if "\x00" in path or ".." in path.split("/") or normalized != path or path in (".", TEMPLATE_ROOT):
            raise ValueError("must be a normalized file path without '..'")
        if path.startswith("/") and not path.startswith(TEMPLATE_ROOT + "/"):
            raise ValueError(f"an absolute path must lie under {TEMPLATE_ROOT}/")
        return path

    @model_validator(mode="after")
    def _one_content(self) -> RecipeFile:
        if (self.content is None) == (self.content_b64 is None):
            raise ValueError("give exactly one of content and content_b64")
        self.data()
        return self

    def data(self) -> bytes:
        if self.content is not None:
            return self.content.encode()
        try:
            return base64.b64decode(self.content_b64 or "", validate=True)
        except binascii.Error as exc:
            raise ValueError(f"{self.path}: content_b64 is not base64: {exc}") from None

    def build_path(self) -> str:
        """Where the build writes it."""
        return self.path if self.path.startswith("/") else f"{BUILD_DIR}/{self.path}"


class Recipe(WireModel):
    """Steps run in this order, each inside the build's sandbox as the sandbox user: files, apt,
    pip, npm, then the commands. A failing step fails the build."""

    apt: list[AptPackage] = Field(
        default_factory=list,
        max_length=64,
        description="Debian packages: apt-get download + dpkg-deb -x into /opt/template/apt "
        "(no maintainer scripts, no dependencies); needs the mirror through the build's network",
    )
    pip: list[PipRequirement] = Field(
        default_factory=list,
        max_length=128,
        description="requirements or ./local.whl files; pip install --target /opt/template/python",
    )
    pip_index_url: IndexUrl | None = None
    pip_no_index: bool = Field(default=False, description="install from the recipe's files only")
    npm: list[NpmPackage] = Field(
        default_factory=list,
        max_length=64,
        description="packages or ./local.tgz files; npm install -g --prefix /opt/template/node",
    )
    files: list[RecipeFile] = Field(default_factory=list, max_length=256)
    commands: list[Command] = Field(
        default_factory=list, max_length=32, description="bash -c, in /home/user/build"
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, max_length=64, description="set in every instance of the template"
    )
    step_timeout_s: int = Field(default=1800, ge=1, le=7200)

    @model_validator(mode="after")
    def _local_packages_are_files(self) -> Recipe:
        given = {f.path for f in self.files}
        if len(given) < len(self.files):
            twice = sorted({f.path for f in self.files if [g.path for g in self.files].count(f.path) > 1})
            raise ValueError(f"files names {', '.join(twice)} more than once; give each path one entry")
        for spec in [*self.pip, *self.npm]:
            if spec.startswith("./") and spec[2:] not in given:
                raise ValueError(f"{spec} is not among the recipe's files (relative paths)")
        if sum(len(f.content or f.content_b64 or "") for f in self.files) > 2 * MAX_FILE_BYTES:
            raise ValueError(f"the recipe's files may hold at most {2 * MAX_FILE_BYTES >> 20} MiB")
        if not (self.apt or self.pip or self.npm or self.files or self.commands):
            raise ValueError("a recipe needs at least one of apt, pip, npm, files or commands")
        return self


class TemplateBuildRequest(WireModel):
    name: TemplateName
    recipe: Recipe
    description: Annotated[str, StringConstraints(max_length=1024)] = ""
    network: NetworkPolicy = Field(
        default_factory=NetworkPolicy,
        description="the build sandbox's egress (default none: packages from the recipe's files only)",
    )

    @field_validator("name")
    @classmethod
    def _not_base(cls, name: str) -> str:
        if name == BASE_TEMPLATE:
            raise ValueError("'base' is the host system and cannot be built")
        return name


BuildState = Literal["building", "ready", "failed"]


class TemplateInfo(ReplyModel):
    name: str
    description: str = ""
    built_at: datetime | None = Field(default=None, description="None for base")
    build_s: float = 0.0
    size_bytes: int = 0
    env: dict[str, str] = Field(default_factory=dict, description="set in every instance")
    recipe: Recipe | None = None
    instances: int = Field(default=0, description="running sandboxes started from it")


class TemplateList(ReplyModel):
    templates: list[TemplateInfo]


class TemplateBuildInfo(ReplyModel):
    id: str
    name: str
    state: BuildState
    step: int = Field(description="1-based index of the step running (or that ran last)")
    total_steps: int
    started_at: datetime
    ended_at: datetime | None = None
    error: str | None = None


class BuildStepEvent(ReplyModel):
    type: Literal["step"] = "step"
    index: int
    total: int
    name: str


class BuildLogEvent(ReplyModel):
    type: Literal["log"] = "log"
    stream: Literal["stdout", "stderr"]
    data: str


class BuildEndEvent(ReplyModel):
    type: Literal["end"] = "end"
    state: Literal["ready", "failed"]
    error: str | None = None
    template: TemplateInfo | None = None


BuildEvent = Annotated[BuildStepEvent | BuildLogEvent | BuildEndEvent, Field(discriminator="type")]
