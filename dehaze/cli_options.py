"""Command-line options generated from a settings model, so a command does not restate its fields.

:func:`model_options` adds one ``--field-name`` option per field of a :class:`~dehaze.config.StrictModel`
to a typer command (help from the field's description, the model's default shown). An option left out
is not passed on, so ``--config`` and the model's defaults decide it; the command receives the options
given as a ``dict`` in its ``options`` parameter, to merge on before validation.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional

import typer
from pydantic.fields import FieldInfo

from dehaze.config import StrictModel


def _cli_type(field: FieldInfo) -> Any:
    """The Python type typer parses a field's value as: the field's own scalar type (a Literal is read as
    text and checked by the model, which names the choices)."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the option's X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return str
    if kind in (bool, int, float, str):
        return kind
    raise TypeError(f"no command-line type for {field.annotation!r}")


def _describe_default(field: FieldInfo) -> str:
    return "" if field.default is None else f" [default: {str(field.default).lower() if isinstance(field.default, bool) else field.default}]"


def model_options(model: type[StrictModel], *, exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command with an option per field of ``model`` (see the module docstring)."""
    names = [n for n in model.model_fields if n not in exclude]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)  # the command's own annotations, evaluated in its module
        if "options" not in sig.parameters:
            raise TypeError(f"{fn.__name__} needs an `options` parameter to receive the {model.__name__} options")
        params = [p for name, p in sig.parameters.items() if name != "options"]
        for name in names:
            field = model.model_fields[name]
            flag = "--" + name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if _cli_type(field) is bool else [flag]
            option = typer.Option(*decls, help=(field.description or "") + _describe_default(field), show_default=False)
            annotation = Annotated[Optional[_cli_type(field)], option]  # type: ignore[valid-type]
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names if n in kwargs}
            return fn(*args, options={k: v for k, v in given.items() if v is not None}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        # typer also reads the annotations themselves: evaluated ones, the generated options included
        wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
        return wrapper

    return decorate
