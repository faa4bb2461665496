"""Built-in methods, registered by name; each class is imported only when selected."""

from relgen.registry import register_method

register_method("textual_inversion", "relgen.methods.textual_inversion.method:TextualInversion",
                summary="textual inversion: placeholder token rows in every text encoder (baseline)")
