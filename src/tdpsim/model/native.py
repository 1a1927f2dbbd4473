"""``mypyc_attr`` for the optional compiled build (``tdpsim.accel``): classes that code
outside the compiled modules subclasses say so.  Without mypy installed it does nothing.

Not a kernel file.
"""

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # the pure-Python model: nothing to tell mypyc
    def mypyc_attr(*_args, **_kwargs):  # type: ignore[no-redef]
        return lambda cls: cls
