"""Built-in methods, registered by name; each class is imported only when selected.

Each method's ``config`` module (light: no torch) registers its schema in Hydra's ConfigStore
when imported; importing them here registers every built-in schema with the methods.
"""

import relgen.methods.relationbooth.config  # noqa: F401  (registers /schema/method/relationbooth)
import relgen.methods.reversion.config  # noqa: F401  (registers /schema/method/reversion)
import relgen.methods.rrnet.config  # noqa: F401  (registers /schema/method/rrnet)
import relgen.methods.textual_inversion.config  # noqa: F401  (registers /schema/method/textual_inversion)
from relgen.registry import register_method

register_method("textual_inversion", "relgen.methods.textual_inversion.method:TextualInversion",
                summary="textual inversion: placeholder token rows in every text encoder (baseline)")
register_method("reversion", "relgen.methods.reversion.method:ReVersion",
                summary="ReVersion: relation token <R> with steering contrastive loss and relation-focal sampling")
register_method("rrnet", "relgen.methods.rrnet.method:RRNet",
                summary="RRNet: heterogeneous graph attention network that adjusts the EOT embedding")
register_method("relationbooth", "relgen.methods.relationbooth.method:RelationBooth",
                summary="RelationBooth: cross-attention LoRA on an image-prompt branch with keypoint loss")
