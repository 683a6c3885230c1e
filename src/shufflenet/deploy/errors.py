"""The error every deploy backend raises when it cannot run here, and the optional-package check that
raises it. A leaf: the engine, the runtimes and export all build on it."""

from __future__ import annotations

from types import ModuleType


class RuntimeUnavailable(RuntimeError):
    """The runtime's package is missing (the message names what to install)."""


def require_package(module: str, package: str) -> ModuleType:
    """``import module``, or :class:`RuntimeUnavailable` saying to ``pip install package``."""
    try:
        return __import__(module)
    except ImportError as error:
        raise RuntimeUnavailable(
            f"{module} is not installed; pip install {package} (or pip install 'shufflenet[deploy]')"
        ) from error
