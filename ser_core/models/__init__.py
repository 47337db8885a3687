"""Task models ("downstream"): one file per paper's model.

Importing this package registers every model in ``MODELS`` (see ``base.register_model``).
"""

from .base import MODELS, build_model, register_model  # noqa: F401
from . import ks_transformer  # noqa: F401,E402  (registers "ks_transformer")
from . import ilt_cat  # noqa: F401,E402  (registers "ilt", "cat")
from . import mfsn  # noqa: F401,E402  (registers "mfsn")
from . import mesm  # noqa: F401,E402  (registers "mesm", "fe2e")
