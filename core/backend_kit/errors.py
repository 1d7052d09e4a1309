"""Translating an engine's exceptions into ``anyray.exceptions`` at the adapter boundary.

A plugin builds one :class:`ErrorMap` from its engine's exception types to
anyray's, and raises ``errors.translate(exc, what) from exc`` wherever a call
into the engine fails on the user's behalf: user code then catches anyray's
types whatever engine runs it, and the engine's error stays reachable as
``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from anyray.exceptions import AnyrayError

Rule = tuple["type[BaseException] | tuple[type[BaseException], ...]",
             "type[AnyrayError] | Callable[[BaseException, str], BaseException]"]


def text(exc: BaseException) -> str:
    """The exception's message, or its type's name when it has none."""
    return str(exc).strip() or type(exc).__name__


class ErrorMap:
    """From an engine's exception types to anyray's, checked in order (put the most specific first).

    Each rule maps an engine type (or a tuple of them) to either an anyray
    exception class, made with the engine error's message, or a function
    ``(exc, what) -> exception`` for errors that need more than the message.
    ``catches`` is what the map handles at all (the engine's base error);
    anything else, and anything already anyray's, is returned as it is. An
    engine error that no rule matches becomes an ``AnyrayError`` that names
    the engine and the error.
    """

    def __init__(self, engine: str, rules: Sequence[Rule],
                 catches: type[BaseException] | tuple[type[BaseException], ...] = BaseException):
        self.engine = engine
        self.rules = tuple(rules)
        self.catches = catches

    def translate(self, exc: BaseException, what: str = "") -> BaseException:
        """The anyray exception for ``exc``; ``what`` names the task or call, for messages that need it."""
        if isinstance(exc, AnyrayError) or not isinstance(exc, self.catches):
            return exc
        for engine_type, ours in self.rules:
            if isinstance(exc, engine_type):
                if isinstance(ours, type):
                    return ours(text(exc))
                return ours(exc, what)
        prefix = f"{what}: " if what else ""
        return AnyrayError(f"{prefix}{self.engine} failed with {type(exc).__name__}: {text(exc)}")


__all__ = ["ErrorMap", "text"]
