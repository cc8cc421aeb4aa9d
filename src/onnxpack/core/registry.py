"""A tiny name -> object registry whose failed lookups name the valid choices."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import OnnxpackError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.name} {key!r} registered twice")
            self._items[key] = item
            return item

        return decorator

    def get(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise OnnxpackError(f"unknown {self.name} {key!r}; known: {', '.join(self.keys())}") from None

    def keys(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
