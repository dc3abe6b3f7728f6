"""One registry type for everything found by name: model-family adapters,
fine-tuning objectives."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from crossget_cli.errors import CrossGetError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by name. ``what`` names the kind in errors ("adapter",
    "fine-tuning objective"); a second registration under a taken name is a bug
    and raises."""

    def __init__(self, what: str):
        self.what = what
        self._classes: dict[str, T] = {}

    def register(self, name: str):
        """Class decorator: add the class under ``name`` and set its ``name``."""

        def decorate(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.what} {name!r} is already registered (by {self._classes[name].__qualname__})")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[T]:
        return iter(self._classes.values())

    def get(self, name: str) -> T:
        """The class registered as ``name``; raises :class:`CrossGetError` naming the choices."""
        if name not in self._classes:
            raise CrossGetError(f"unknown {self.what} {name!r}", f"choose one of: {', '.join(self.names())}")
        return self._classes[name]
