"""One module per backend; importing this package registers every backend with the registry.

Each backend module must import without its optional dependency (Triton, the compiled library) and report
why it is unavailable through its ``unavailable_reason`` instead.
"""

from . import (
    native,  # noqa: F401  (the compiled library: backends "cpu" and "cuda")
    reference,  # noqa: F401
    triton_patch_embed,  # noqa: F401
)
