"""relgen's own plugin: the built-in methods, backbones, datasets and prompt sets.

It is registered through the same ``relgen.plugins`` entry point a third-party package uses
(``relgen = "relgen.builtins:plugin"`` in ``pyproject.toml``). Each method is a lazy
``"module:Class"`` string with its light config schema, so listing names imports no torch.
"""

from types import SimpleNamespace

plugin = SimpleNamespace(
    methods=[
        ("relgen.methods.textual_inversion.method:TextualInversion",
         "relgen.methods.textual_inversion.config:TextualInversionConfig",
         "textual inversion: placeholder token rows in every text encoder (baseline)"),
        ("relgen.methods.reversion.method:ReVersion", "relgen.methods.reversion.config:ReVersionConfig",
         "ReVersion: relation token <R> with steering contrastive loss and relation-focal sampling"),
        ("relgen.methods.rrnet.method:RRNet", "relgen.methods.rrnet.config:RRNetConfig",
         "RRNet: heterogeneous graph attention network that adjusts the EOT embedding"),
        ("relgen.methods.relationbooth.method:RelationBooth", "relgen.methods.relationbooth.config:RelationBoothConfig",
         "RelationBooth: cross-attention LoRA on an image-prompt branch with keypoint loss"),
    ],
    prompt_sets={
        "reversion_benchmark": ("relgen.methods.reversion.prompts:benchmark_prompt_set",
                                "ReVersion's 10 relations x 100 scenarios"),
        "rrnet_pairs": ("relgen.methods.rrnet.prompts:pair_prompt_set",
                        "the object-swapped pair A R B / B R A of an RRNet run's relation"),
        "relworld_relation": ("relgen.relworld.prompt_set:relation_prompt_set",
                              "a relworld run's relation on object-swapped pairs in relworld's words"),
    },
    modules=("relgen.backbones", "relgen.data.registry", "relgen.relworld.datasets", "relgen.relworld.metric"),
)
