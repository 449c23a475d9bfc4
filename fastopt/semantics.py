"""Which host release's behaviour a constructor follows: ``Semantics`` and ``parse``.

The default constructors of the supported releases build the same groups except where a
switch below says otherwise (docs/semantics.md, "Version selection"):

>>> s = parse('mmengine==0.10.3')
>>> str(s), s.keep_frozen, s.base_param_settings
('mmengine==0.10.3', True, True)
>>> parse('mmengine==0.10.4').keep_frozen
False

Without a choice, a constructor follows the installed host (``default``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import warnings
from dataclasses import dataclass, field

__all__ = ["SUPPORTED", "Semantics", "default", "installed_version", "parse", "resolve"]

Version = tuple[int, int, int]

#: The releases whose behaviour fastopt reproduces, per API: (oldest, newest), inclusive.
SUPPORTED: dict[str, tuple[Version, Version]] = {
    "mmengine": ((0, 7, 0), (0, 10, 7)),
    "mmcv": ((1, 3, 0), (1, 7, 2)),
}

#: Distributions that install each API's package (mmcv 1.x also shipped as mmcv-full).
_DISTRIBUTIONS = {"mmengine": ("mmengine",), "mmcv": ("mmcv", "mmcv-full")}

_VERSION = re.compile(r"\d+(\.\d+){0,2}")


def _shown(version: Version) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class Semantics:
    """The group-building behaviour of one host release: ``api`` ('mmengine' or 'mmcv'), its
    ``version``, and the switches that differ between releases (derived from the two)."""

    api: str
    version: Version
    #: frozen parameters (requires_grad=False) are kept as bare groups ``{'params': [p]}``:
    #: mmcv always, mmengine up to 0.10.3; mmengine 0.10.4 on leaves them out of every group
    keep_frozen: bool = field(init=False)
    #: the OptimWrapper of an optimizer with several groups records the optimizer's defaults
    #: as ``base_param_settings`` (in ``state_dict`` and ``param_groups``): mmengine 0.8.0 on
    base_param_settings: bool = field(init=False)
    #: the parameters go to the optimizer's first constructor argument, whatever its name:
    #: mmengine 0.9.0 on (before, and in mmcv, to ``params``)
    first_arg_lookup: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.api not in SUPPORTED:
            raise ValueError(f"unknown API {self.api!r}: expected one of {', '.join(map(repr, SUPPORTED))}")
        if (not isinstance(self.version, tuple) or len(self.version) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in self.version)):
            raise ValueError(f"version must be a tuple of three non-negative ints, got {self.version!r}")
        oldest, newest = SUPPORTED[self.api]
        if not oldest <= self.version <= newest:
            raise ValueError(f"{self.api}=={_shown(self.version)} is outside the supported releases "
                             f"{self.api} {_shown(oldest)} to {_shown(newest)}")
        mmengine = self.api == "mmengine"
        object.__setattr__(self, "keep_frozen", not mmengine or self.version <= (0, 10, 3))
        object.__setattr__(self, "base_param_settings", mmengine and self.version >= (0, 8, 0))
        object.__setattr__(self, "first_arg_lookup", mmengine and self.version >= (0, 9, 0))

    def __str__(self) -> str:
        return f"{self.api}=={_shown(self.version)}"


def _release(text: str) -> Version:
    numbers = [int(v) for v in text.split(".")]
    return (*numbers, *([0] * (3 - len(numbers))))  # type: ignore[return-value]


def parse(spec: str | Semantics) -> Semantics:
    """``'mmengine==0.10.3'`` or ``'mmcv==1.7.2'`` (``X.Y`` means ``X.Y.0``) as ``Semantics``;
    ValueError for an unknown API, a malformed version or a release outside ``SUPPORTED``."""
    if isinstance(spec, Semantics):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"semantics must be a str such as 'mmengine==0.10.3' or a Semantics, "
                        f"got {type(spec).__name__}")
    api, sep, version = (part.strip() for part in spec.partition("=="))
    if not sep:
        raise ValueError(f"semantics {spec!r} is not of the form 'API==VERSION', e.g. 'mmengine==0.10.3'")
    if api not in SUPPORTED:
        raise ValueError(f"semantics {spec!r}: unknown API {api!r}, expected one of "
                         f"{', '.join(map(repr, SUPPORTED))}")
    if not _VERSION.fullmatch(version):
        raise ValueError(f"semantics {spec!r}: malformed version {version!r}, expected X.Y.Z such as 0.10.3")
    return Semantics(api, _release(version))


@functools.cache
def installed_version(api: str) -> Version | None:
    """The installed release of ``api``'s package (its leading ``X.Y.Z``), None when not installed.
    Looked up once per process."""
    for dist in _DISTRIBUTIONS[api]:
        try:
            text = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        found = _VERSION.match(text)
        if found:
            return _release(found.group(0))
    return None


def default(api: str) -> Semantics:
    """The installed host release of ``api`` (mmcv only when a 1.x is installed); the newest
    supported one when it is not installed or newer than known. An installed release older
    than supported gets the oldest supported one, with a warning."""
    if api not in SUPPORTED:
        raise ValueError(f"unknown API {api!r}: expected one of {', '.join(map(repr, SUPPORTED))}")
    oldest, newest = SUPPORTED[api]
    found = installed_version(api)
    if found is None or found > newest or (api == "mmcv" and found[0] != 1):
        return Semantics(api, newest)
    if found < oldest:
        warnings.warn(f"{api} {_shown(found)} is older than the oldest supported release "
                      f"{_shown(oldest)}; following {api}=={_shown(oldest)}", UserWarning, stacklevel=3)
        return Semantics(api, oldest)
    return Semantics(api, found)


def resolve(semantics: str | Semantics | None, api: str) -> Semantics:
    """The ``Semantics`` a constructor of ``api`` uses: ``default(api)`` for None, else the parsed
    choice, which must name the same API."""
    if semantics is None:
        return default(api)
    chosen = parse(semantics)
    if chosen.api != api:
        raise ValueError(f"semantics {str(chosen)!r} is for {chosen.api}, but this is an {api} "
                         f"constructor: expected '{api}==X.Y.Z'")
    return chosen
