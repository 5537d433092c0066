"""grpc.aio's client interceptor base classes, subscripted for the type checker only.

grpc-stubs makes them generic; at run time they are plain classes and cannot be subscripted. grpc.aio files
an interceptor under the first arity it matches, so an interceptor for both arities is two objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["UnaryStreamClientBase", "UnaryUnaryClientBase"]

if TYPE_CHECKING:
    UnaryUnaryClientBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    UnaryUnaryClientBase = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamClientBase = grpc.aio.UnaryStreamClientInterceptor
