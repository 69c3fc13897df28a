"""peft_teach: the small helper package of the course "PEFT from Scratch"."""

import logging

__version__ = "0.1.0"


def _quiet_optional_bitsandbytes_kernel(record: logging.LogRecord) -> bool:
    """Drop bitsandbytes' note that an optional CPU kernel package is missing; keep its other messages.

    `import peft` imports bitsandbytes when it is installed (the course's NF4 tests use it). On a CPU
    with AVX512-BF16, bitsandbytes then tries the optional ``kernels`` package and logs a warning when
    it is absent. Nothing in the course uses that kernel, and the warning would make a lesson's output
    depend on the CPU it runs on.
    """
    return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_quiet_optional_bitsandbytes_kernel)
