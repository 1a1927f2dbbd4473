"""tdpsim: an executable, bit-accurate model of KVM's x86 TDP MMU with TDX mirror roots
and of the TDX module's Secure-EPT."""

__version__ = "0.1.0"

from . import accel as _accel

_accel.install()  # a no-op unless TDPSIM_ACCEL asks for the compiled model
