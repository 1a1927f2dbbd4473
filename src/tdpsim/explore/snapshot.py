"""Setup snapshots: run a scenario's sequential setup once per process, restore it per execution.

Every execution of a scenario starts from the same state: the VM (and TD) after creation,
finalisation and the ``[[setup]]`` ops.  Re-running that setup costs as much as the
concurrent part of small scenarios, so ``Scenario.build`` runs it once, pickles the
``OpContext`` (which reaches the ``Kvm``, the ``KvmTdx`` glue, the TDX module, locks, RCU,
memslots, ...) and restores a private copy per execution with ``pickle.loads`` (measured:
~3x faster than the setup it replaces on ``seed_2vcpu``; ``copy.deepcopy`` is *slower* than
the setup and, worse, keeps closures bound to the original objects — see below).  Flat
containers of atoms (the PAMT dict, S-EPT and SPT arrays) are not unpickled but copied from
a template kept beside the pickle: 52 KB -> 6.6 KB of pickle on ``seed_2vcpu``.

Why pickling is exact here: the model keeps all state in plain objects reachable from the
context (no module-level state, no ``id()``-keyed structures, sets are only iterated through
``sorted``), pickle preserves sharing and cycles within one ``dumps`` (the one
``SchedPoints`` instance stays shared by the VM, its locks and the TDX module), and the
explorer's class swaps (``tracking.track``) are part of the pickled objects' classes.

Closures.  The model stores a few closures in its objects — ``Kvm.mmu_lock.lockdep_report``
(``lambda msg: self.WARN_ON_ONCE(...)``), ``Rcu.pending`` callbacks, the TDX module's lock
undo list.  Plain pickle cannot serialise them and ``deepcopy`` copies functions *by
reference*, so a restored VM would report its lockdep splats to the original VM.  The pickler
here serialises such a function as (prototype, defaults, closure cells) and the cells by value,
so the restored closure is bound to the restored objects.  The prototype (code + globals) is
kept in a per-process registry, so a snapshot is only valid in the process that took it —
which is all it is used for (workers each take their own).
"""

from __future__ import annotations

import array
import collections
import copyreg
import dataclasses
import enum
import functools
import io
import pickle
import types
from typing import Any, Callable

_PROTOTYPES: list[types.FunctionType] = []  # index -> a function carrying code and globals
_PROTO_INDEX: dict[types.CodeType, int] = {}


def _new_cell() -> types.CellType:
    return types.CellType()


def _set_cell(cell: types.CellType, value: Any) -> None:
    cell.cell_contents = value


def _rebuild_function(index: int, defaults: Any, kwdefaults: Any, closure: Any
                      ) -> types.FunctionType:
    proto = _PROTOTYPES[index]
    fn = types.FunctionType(proto.__code__, proto.__globals__, proto.__name__, defaults,
                            closure)
    fn.__kwdefaults__ = kwdefaults
    fn.__qualname__ = proto.__qualname__
    return fn


def _importable(fn: types.FunctionType) -> bool:
    """Would plain pickle find this function again by its module and qualified name?"""
    return fn.__closure__ is None and "<" not in fn.__qualname__


_ATOMS = (int, float, str, bytes, bool, type(None), enum.Enum)


def _immutable(v: Any) -> bool:
    """Can ``v`` be shared by every restore: built of atoms, tuples, frozensets and frozen
    dataclasses of those only (nothing any code could mutate)."""
    if isinstance(v, _ATOMS):
        return True
    if type(v) in (tuple, frozenset):
        return all(_immutable(x) for x in v)
    params = getattr(type(v), "__dataclass_params__", None)
    if params is None or not params.frozen:
        return False
    return all(_immutable(getattr(v, f.name)) for f in dataclasses.fields(v))


# Flat containers a restore copies from a kept template (``dict.copy`` / slicing: C loops,
# ~20x cheaper than unpickling the PAMT's ~500 entries one by one).  Only containers of
# atoms: a shallow copy of those is a full copy.
_MIN_COPIED_DICT = 16  # below this, unpickling the entries costs less than the copy's call
_ALL = slice(None)


def _copier(obj: Any) -> Callable[[], Any] | None:
    """How a restore copies ``obj`` from its template, or None if it is pickled as usual."""
    t = type(obj)
    if t is bytearray or t is array.array:
        return functools.partial(obj[:].__getitem__, _ALL)
    if t is dict and len(obj) >= _MIN_COPIED_DICT \
            and all(type(k) in (int, str) and isinstance(v, _ATOMS) for k, v in obj.items()):
        template = obj.copy()  # the snapshot's own: the live ``obj`` keeps changing
        return template.copy
    return None


class _Pickler(pickle.Pickler):
    """Closures by value (see the module docstring); frozen dataclass values (SPTE roles,
    policies, configs) by reference: they cannot change, so every restore shares them
    instead of rebuilding them (``dataclasses``' unpickling of frozen slotted classes is the
    costliest part of a restore); flat containers of atoms as copies of a template
    (``_copier``)."""

    def __init__(self, buf: io.BytesIO, table: list, copiers: list) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self.table = table
        self.copiers = copiers
        self._ids: dict[int, int] = {}  # id(obj) -> its persistent id (index in ``table``)
        self._keep: list = []

    def persistent_id(self, obj: Any) -> Any:
        i = self._ids.get(id(obj))
        if i is not None:
            return i
        if getattr(type(obj), "__dataclass_params__", None) is not None:
            if not _immutable(obj):
                return None
            shared = obj
        else:
            copier = _copier(obj)
            if copier is None:
                return None
            self.copiers.append((len(self.table), copier))
            shared = None  # a restore puts its copy here
        i = self._ids[id(obj)] = len(self.table)
        self.table.append(shared)
        self._keep.append(obj)  # its id() must stay its own for the whole dump
        return i

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.CellType:
            try:
                contents = obj.cell_contents
            except ValueError:  # an empty cell
                return (_new_cell, ())
            # State set after the (memoised) empty cell exists: cycles through it are fine.
            return (_new_cell, (), contents, None, None, _set_cell)
        if t is collections.Counter:
            # Its own reduce rebuilds it through ``Counter.__init__`` (Python, per restore);
            # an empty one filled item by item is the same Counter.
            return (copyreg.__newobj__, (t,), obj.__dict__ or None, None, iter(obj.items()))
        if t is types.FunctionType and not _importable(obj):
            if obj.__dict__:
                raise pickle.PicklingError(f"snapshot: function {obj.__qualname__} carries "
                                           f"attributes {sorted(obj.__dict__)}")
            index = _PROTO_INDEX.get(obj.__code__)
            if index is None:
                index = _PROTO_INDEX[obj.__code__] = len(_PROTOTYPES)
                _PROTOTYPES.append(obj)
            return (_rebuild_function,
                    (index, obj.__defaults__, obj.__kwdefaults__, obj.__closure__))
        return NotImplemented


class Snapshot:
    """A pickled object graph; ``restore()`` returns a fresh, fully independent copy."""

    __slots__ = ("data", "shared", "copiers")

    def __init__(self, root: Any) -> None:
        buf = io.BytesIO()
        # Persistent id -> the shared object, or None where a restore puts a fresh copy.
        self.shared: list = []
        self.copiers: list[tuple[int, Callable[[], Any]]] = []
        _Pickler(buf, self.shared, self.copiers).dump(root)
        self.data = buf.getvalue()

    def restore(self) -> Any:
        u = pickle.Unpickler(io.BytesIO(self.data))
        # Every copied container is referenced at least once, so all copies are made up
        # front; one per persistent id, so a container referenced twice stays one object.
        table = self.shared[:]
        for i, copy in self.copiers:
            table[i] = copy()
        u.persistent_load = table.__getitem__
        return u.load()
