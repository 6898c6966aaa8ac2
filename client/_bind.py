"""Request builders as client methods, shared by the HTTP and the gRPC clients: a builder
(``client.routes``, ``client.grpc``) bound to a client sends what it builds with the client's
``run``, and is typed as returning the result (blocking clients) or a coroutine of it (trio)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar, overload

if TYPE_CHECKING:
    from .grpc import Rpc
    from .routes import Call

P = ParamSpec("P")
T = TypeVar("T")


class Blocking:
    """A client whose ``run`` returns the result: its bound builders do too."""

    def run(self, built: Any) -> Any:
        raise NotImplementedError


class Async:
    """A trio client whose ``run`` is a coroutine: its bound builders are coroutines."""

    async def run(self, built: Any) -> Any:
        raise NotImplementedError


class endpoint(Generic[P, T]):
    """A request builder as a method: on a ``Blocking`` client it returns the result, on an
    ``Async`` one a coroutine of it, with the builder's arguments either way."""

    def __init__(self, build: Callable[P, Call[T] | Rpc[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: Blocking, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Async, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: Blocking | Async | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build = self.build

        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return obj.run(build(*args, **kwargs))

        bound.__doc__ = self.__doc__
        bound.__name__ = getattr(build, "__name__", "route")
        return bound
