"""The exceptions fastopt raises for a config error, each an instance of every class the
references (mmengine 0.10.x, mmcv 1.x) raise for the same config, so a user's ``except``
clause written for the host catches fastopt's error too; the message is fastopt's own.

>>> issubclass(UnknownTypeError, KeyError) and issubclass(UnknownTypeError, TypeError)
True
"""

from __future__ import annotations

__all__ = ["ConfigNotADictError", "MissingLrError", "MissingOptimizerError", "MissingTypeError",
           "UnknownTypeError"]


class UnknownTypeError(KeyError, TypeError):
    """A ``type`` no registry knows: a KeyError for the registries (mmcv's and mmengine's
    ``build_from_cfg``), a TypeError where mmengine's constructor looks the optimizer up
    itself (``inspect.signature(None)``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingTypeError(KeyError):
    """An optimizer config without ``type`` (the references' ``KeyError: 'type'``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingOptimizerError(AssertionError, KeyError):
    """An ``optim_wrapper`` config without ``optimizer`` (mmengine asserts it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigNotADictError(TypeError, AttributeError):
    """An optimizer config that is not a dict (the references fail reading it as one, with an
    AttributeError)."""


class MissingLrError(ValueError, TypeError):
    """A rule sets a parameter's lr as a multiple of the optimizer's, and the config has no
    ``lr`` (the references fail multiplying None: a TypeError)."""
