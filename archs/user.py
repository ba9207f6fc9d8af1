"""The user's own model: `arch: PATH.py:NAME` or `arch: package.module:NAME` in a sweep file.

    archs.user.load("nets/tiny.py:TinyNet", base_dir="experiments/")  # an Arch record, registered
    archs.create("nets/tiny.py:TinyNet", num_classes=3, image_size=48, depth=2)

`NAME` is a class or a function, called as `NAME(num_classes=..., **knobs)` and with `image_size=`
when its signature has that parameter. Its other parameters are its knobs: the annotation gives the
type (int, float, bool, str; `Literal[...]` the allowed values), the default the default, and a
parameter without a default must be set. The reference becomes an `Arch` of the zoo's registry
under the reference as written, so validation, search spaces, the engine and the run record treat
it as any other arch.

Where the code is found, and how it reaches Ray's workers (`Code.ship`, given to Ray's runtime_env
`py_modules` by the sweep):
- `PATH.py:NAME`: PATH relative to the sweep file's folder (or absolute). The file is imported as
  the module named after it (`tiny`), as `python tiny.py` would run it; it is shipped alone, so it
  may import the environment's packages, not its sibling files (make a package for several files).
- `package.module:NAME`: imported from the sweep file's folder (put first on sys.path, as a
  script's folder is) or from the environment. A package found in the sweep file's folder is
  shipped whole; one installed in the environment is expected on every node, like torch.
A process that was never told the base folder (a Ray worker) imports the shipped module by name.

Loading runs the user's code, as `python FILE.py` would: only a sweep file that names code does it;
data folders and stores never do. Torch only: no Ray or MLflow here (the GPU machine has neither).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
import typing
from typing import Any, Callable

import torch

from archs.registry import REQUIRED, Arch, Knob, KnobError, put

KNOB_TYPES = (int, float, bool, str)
# What the call fills in itself: never a knob.
RESERVED = ("num_classes", "image_size")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
FILE_REF = re.compile(rf"^(?P<path>[^:]+\.py):(?P<name>{_IDENT})$")
MODULE_REF = re.compile(rf"^(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<name>{_IDENT})$")


class CodeError(ValueError):
    """User code that cannot be used as a model. str() is one line naming the reference and what
    is wrong; `knob` names the knob when one is at fault."""

    def __init__(self, message: str, knob: str | None = None):
        super().__init__(" ".join(message.split()))
        self.knob = knob


@dataclasses.dataclass(frozen=True)
class Code:
    """Where a user's model lives and what identifies it."""

    ref: str  # as written in the sweep file: the arch's name everywhere
    module: str  # the import name (a file's: its stem)
    file: str  # the absolute path of the file that defines NAME
    sha256: str  # of that file
    ship: str | None  # the file or package folder Ray's runtime_env py_modules gets; None: installed


def is_reference(arch: str) -> bool:
    """Whether `arch` names user code (`PATH.py:NAME`, `package.module:NAME`) rather than a zoo arch."""
    return isinstance(arch, str) and ":" in arch


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def parse(ref: str) -> tuple[str | None, str | None, str]:
    """(file path or None, module or None, NAME) of a reference, or CodeError."""
    match = FILE_REF.match(ref)
    if match:
        return match["path"], None, match["name"]
    match = MODULE_REF.match(ref)
    if match:
        return None, match["module"], match["name"]
    raise CodeError(f"{ref!r} is not PATH.py:NAME or package.module:NAME (NAME a class or function)")


def load(ref: str, base_dir: str | None = None, file: str | None = None) -> Arch:
    """Import the code `ref` names, read its knobs, and register it as an `Arch` named `ref`.
    `base_dir`: the sweep file's folder, where relative paths and packages are looked up; None in
    a process that only has the shipped copy (a Ray worker): the module is imported by its name.
    `file`: for `PATH.py:NAME`, a copy of the file to load instead (one a run recorded)."""
    path, module_name, name = parse(ref)
    if path is not None:
        module, file, ship = _load_file(ref, path, base_dir, file)
    else:
        module, file, ship = _load_module(ref, module_name, base_dir)
    obj = getattr(module, name, None)
    if obj is None:
        raise CodeError(f"{ref}: {file} defines no {name!r}")
    if not callable(obj):
        raise CodeError(f"{ref}: {name} is a {type(obj).__name__}, not a class or function")
    knobs, takes_image_size = signature_knobs(ref, obj)
    code = Code(ref, module.__name__, file, sha256_of(file), ship)
    builder = _builder(obj)
    return put(Arch(name=ref, family=name, builder=builder, knobs=knobs, paper=f"your code: {file}",
                    takes_image_size=takes_image_size, code=code))


def models_in(path: str, base_dir: str | None = None) -> list[str]:
    """The references (`PATH.py:NAME`) of every public class or function the file at `path`
    defines (not imports) whose signature takes `num_classes`, each loaded into the registry:
    what `orchestrate archs --from PATH.py` lists."""
    base_dir = base_dir or os.getcwd()
    if not path.endswith(".py"):
        raise CodeError(f"{path!r} is not a .py file")
    module, _, _ = _load_file(path, path, base_dir)
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
            continue
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if "num_classes" in params:
            found.append(load(f"{path}:{name}", base_dir).name)
    return found


def _builder(obj: Callable) -> Callable[..., torch.nn.Module]:
    def build(**kwargs):
        return obj(**kwargs)

    build.__name__ = getattr(obj, "__name__", "model")
    return build


def _load_file(ref: str, path: str, base_dir: str | None, file: str | None = None):
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier():
        raise CodeError(f"{ref}: {os.path.basename(path)!r} is not a Python module name (letters, digits, _)")
    if base_dir is None and file is None:
        # A Ray worker: the file was shipped under its own name (runtime_env py_modules).
        try:
            module = importlib.import_module(stem)
        except ImportError as e:
            raise CodeError(f"{ref}: module {stem} was not shipped to this process ({e})") from None
        return module, module.__file__, None
    explicit = file
    file = file or os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))
    if not os.path.isfile(file):
        raise CodeError(f"{ref}: {file} does not exist (a path relative to the sweep file's folder)")
    digest = sha256_of(file)
    loaded = sys.modules.get(stem)
    if loaded is not None:
        if not getattr(loaded, "__orchestrate_code__", False):
            raise CodeError(f"{ref}: its module name {stem!r} is already taken by "
                            f"{getattr(loaded, '__file__', None) or stem}; rename the file")
        if loaded.__file__ == file and loaded.__orchestrate_sha256__ == digest:
            return loaded, file, file
        del sys.modules[stem]  # another file of that name (or this one changed), in this process
    elif explicit is None:  # a copy a run recorded is loaded as asked, whatever sys.path holds
        found = importlib.util.find_spec(stem)
        if found is not None and found.origin != file:
            raise CodeError(f"{ref}: its module name {stem!r} is already importable ({found.origin}), and Ray's "
                            f"workers would import that instead; rename the file")
    spec = importlib.util.spec_from_file_location(stem, file)
    module = importlib.util.module_from_spec(spec)
    module.__orchestrate_code__, module.__orchestrate_sha256__ = True, digest
    sys.modules[stem] = module  # as an import would: pickling and dataclasses find it
    try:
        with _no_bytecode():
            spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - the user's module may raise anything, SystemExit too
        del sys.modules[stem]
        raise CodeError(f"{ref}: importing {file} failed at {_where(e, file)}") from None
    return module, file, file


def _load_module(ref: str, module_name: str, base_dir: str | None):
    if base_dir is not None:
        base = os.path.abspath(base_dir)
        if base not in sys.path:
            sys.path.insert(0, base)  # as a script's folder is: its packages import first
    try:
        with _no_bytecode():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            where = f" in {base_dir} or the environment" if base_dir is not None else " (not shipped here)"
            raise CodeError(f"{ref}: no module named {e.name!r}{where}") from None
        raise CodeError(f"{ref}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    except BaseException as e:
        raise CodeError(f"{ref}: importing {module_name} failed at {_where(e, None)}") from None
    file = getattr(module, "__file__", None)
    if not file:
        raise CodeError(f"{ref}: {module_name} is not a module with a file")
    top = importlib.import_module(module_name.split(".")[0])
    top_path = (list(getattr(top, "__path__", [])) or [top.__file__])[0]
    ship = None
    if base_dir is not None and os.path.commonpath([os.path.abspath(top_path), os.path.abspath(base_dir)]) \
            == os.path.abspath(base_dir):
        ship = top_path  # the sweep's own package: every node needs a copy
    return module, file, ship


@contextlib.contextmanager
def _no_bytecode():
    """Import without writing __pycache__ beside the user's code: checking a sweep writes nothing."""
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def _where(error: BaseException, file: str | None) -> str:
    """`FILE line N: ErrorType: message` of an exception raised while importing user code."""
    if isinstance(error, SyntaxError):
        return f"{error.filename or file} line {error.lineno}: SyntaxError: {error.msg}"
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if file is None or f.filename == file] or frames
    frame = mine[-1] if mine else None
    place = f"{frame.filename} line {frame.lineno}" if frame else (file or "?")
    return f"{place}: {type(error).__name__}: {error}"


def signature_knobs(ref: str, obj: Callable) -> tuple[tuple[Knob, ...], bool]:
    """The knobs of `obj`'s signature (every parameter but num_classes and image_size), and
    whether it takes `image_size`."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError) as e:
        raise CodeError(f"{ref}: its signature cannot be read ({e})") from None
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation naming something undefined: read them raw
        hints = {}
    params = sig.parameters
    if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise CodeError(f"{ref}: takes no num_classes argument; it is called as NAME(num_classes=..., **knobs)")
    knobs = []
    for p in params.values():
        if p.name in RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise CodeError(f"{ref}: parameter {p.name} is positional-only; knobs are passed by name", knob=p.name)
        default = REQUIRED if p.default is p.empty else p.default
        knobs.append(_knob(ref, p.name, hints.get(p.name, p.annotation), default))
    return tuple(knobs), "image_size" in params


def _knob(ref: str, name: str, annotation: Any, default: Any) -> Knob:
    allowed = "int, float, bool, str or Literal[...] of them"
    choices = None
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or next(iter(kinds)) not in KNOB_TYPES:
            raise CodeError(f"{ref}: knob {name}: Literal{list(choices)} mixes types or holds a type other than "
                            f"int, float, bool, str", knob=name)
        typ = kinds.pop()
    elif annotation in KNOB_TYPES:
        typ = annotation
    elif annotation is inspect.Parameter.empty and type(default) in KNOB_TYPES:
        typ = type(default)  # unannotated: the default's type
    else:
        shown = getattr(annotation, "__name__", None) or str(annotation)
        raise CodeError(f"{ref}: knob {name}: annotation {shown} is not one of {allowed}"
                        + ("" if default is REQUIRED else f" (default {default!r})"), knob=name)
    knob = Knob(name, typ, default, choices=choices, help=f"{ref}'s argument")
    if default is not REQUIRED:
        try:
            knob.check(default)
        except KnobError as e:
            raise CodeError(f"{ref}: knob {name}: its default {default!r} {e.allowed}", knob=name) from None
    return knob


def check_model(arch: Arch, knobs: dict[str, Any], num_classes: int, image_size: int) -> str | None:
    """Build `arch` with `knobs` for `num_classes` at `image_size` and run a batch of 2 through it
    (on the meta device: shapes only; on the CPU where the meta device cannot run it). None if the
    logits are [2, num_classes], else one line saying what went wrong."""
    sized = {"image_size": image_size} if arch.takes_image_size else {}
    call = f"{arch.family}(num_classes={num_classes}, " + ", ".join(
        f"{k}={v!r}" for k, v in {**sized, **knobs}.items()) + ")"
    call = call.replace(", )", ")")
    error = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = arch.builder(num_classes=num_classes, **sized, **knobs)
                if not isinstance(model, torch.nn.Module):
                    return f"{call} returned a {type(model).__name__}, not a torch.nn.Module"
                model.eval()
                with torch.no_grad():
                    out = model(torch.zeros(2, 3, image_size, image_size))
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            error = f"{call} raised {type(e).__name__}: {e}"
            continue
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return (f"{call} on a batch of 2 {image_size}x{image_size} images gives {got}; "
                    f"expected [2, {num_classes}] (one logit per class)")
        return None
    return error
